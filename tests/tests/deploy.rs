//! Files under deploy/ are checked by the tools that read them.

use std::process::Command;

#[test]
fn nats_server_accepts_the_deploy_config() {
    let binary = inception_core::local_nats::find_binary().expect("nats-server (scripts/setup.sh installs it)");
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nats/nats-server.conf");
    let out = Command::new(binary).args(["-t", "-c", conf]).output().expect("run nats-server -t");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("configuration file") && text.contains("is valid"), "{text}");
}
