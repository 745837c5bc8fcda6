//! The shared start-up of every service: a configuration error that only
//! shows when NATS is set up (an unreadable credentials file, a bad nkey
//! seed) stops the service with a non-zero exit and a message naming the
//! setting, instead of an exit 0 with no word.

use inception_integration_tests::Proc;
use std::time::Duration;

const SERVICES: [(&str, &str); 4] = [
    ("inception-ingest", "INGEST"),
    ("inception-preprocess", "PREPROCESS"),
    ("inception-trainer", "TRAIN"),
    ("inception-evaluator", "EVAL"),
];

fn start_with(name: &str, section: &str, setting: (&str, &str), logs: &std::path::Path) -> Proc {
    let store = logs.join("store");
    let env = vec![
        (format!("INCEPTION__{section}__METRICS_ADDR"), "127.0.0.1:0".to_string()),
        ("INCEPTION__STORE__URL".to_string(), format!("file://{}", store.display())),
        // Nothing listens here: were the setting ignored, the service would
        // keep retrying and the wait below would fail.
        ("INCEPTION__NATS__URL".to_string(), "nats://127.0.0.1:1".to_string()),
        (setting.0.to_string(), setting.1.to_string()),
    ];
    std::fs::create_dir_all(&store).unwrap();
    Proc::spawn(name, &[], &env, logs)
}

#[test]
fn an_unreadable_credentials_file_stops_every_service_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such.creds");
    for (name, section) in SERVICES {
        let setting = ("INCEPTION__NATS__CREDENTIALS_FILE", missing.to_str().unwrap());
        let mut service = start_with(name, section, setting, dir.path());
        let status = service.wait(Duration::from_secs(60));
        let (_, stderr) = service.output();
        assert!(!status.success(), "{name} exited {status} with an unreadable credentials file\n{stderr}");
        assert!(stderr.contains("nats.credentials_file"), "{name} did not name the setting:\n{stderr}");
        assert!(stderr.contains("no-such.creds"), "{name} did not name the file:\n{stderr}");
    }
}

#[test]
fn an_invalid_nkey_seed_stops_a_service_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let setting = ("INCEPTION__NATS__NKEY_SEED", "SUNOTASEED");
    let mut service = start_with("inception-preprocess", "PREPROCESS", setting, dir.path());
    let status = service.wait(Duration::from_secs(60));
    let (_, stderr) = service.output();
    assert!(!status.success(), "exited {status} with an invalid nkey seed\n{stderr}");
    assert!(stderr.contains("nats.nkey_seed is not a valid nkey seed"), "{stderr}");
    assert!(!stderr.contains("SUNOTASEED"), "the seed is a secret and must not be printed:\n{stderr}");
}

#[test]
fn a_service_stopped_while_nats_is_unreachable_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut service =
        start_with("inception-preprocess", "PREPROCESS", ("INCEPTION__NATS__CONNECT_RETRY", "0.2s"), dir.path());
    inception_integration_tests::wait_until(
        "a retry log line",
        Duration::from_secs(30),
        || service.output().1.contains("cannot reach NATS"),
        || service.output().1,
    );
    let status = service.terminate(Duration::from_secs(30));
    let (_, stderr) = service.output();
    assert!(status.success(), "a requested shutdown is not an error: {status}\n{stderr}");
    assert!(stderr.contains("stopped before NATS was reachable"), "{stderr}");
}
