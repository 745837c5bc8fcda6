//! Authentication and secrets: every kind of NATS credential the services
//! support (user/password, token, nkey, TLS with a CA the test makes) against
//! a nats-server that requires it; a client without them is refused; and no
//! secret ever shows in a service's logs, metrics or errors.

use inception_core::local_nats::LocalNats;
use inception_core::nats::{self, Streams};
use inception_core::settings::{env_vars, NatsSettings, Secret, Settings};
use inception_core::shutdown::CancellationToken;
use inception_integration_tests::{free_port, http_get, scraped_value, Proc};
use std::path::Path;
use std::time::{Duration, Instant};

fn server(dir: &Path, name: &str, config: &str) -> LocalNats {
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, config).unwrap();
    LocalNats::start_with_config(&dir.join(name), &conf).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn settings(url: String) -> NatsSettings {
    NatsSettings { url, ..Settings::defaults().unwrap().nats }
}

/// One connection attempt; on success, a JetStream round trip.
async fn try_connect(s: &NatsSettings) -> Result<(), String> {
    let options = nats::connect_options(s, "security-test").await.map_err(|e| e.to_string())?;
    let client = options.connect(s.url.as_str()).await.map_err(|e| e.to_string())?;
    Streams::new(client, "inception").shards().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// `connect` as the services call it: retries until it works.
async fn connect_like_a_service(s: &NatsSettings) {
    let stop = CancellationToken::new();
    let connected = tokio::time::timeout(Duration::from_secs(20), nats::connect(s, "security-test", &stop)).await;
    assert!(matches!(connected, Ok(Ok(_))), "{:?}", connected.map(|r| r.map(|_| ())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_credentials_is_required_and_accepted() {
    let dir = tempfile::tempdir().unwrap();

    // User and password.
    let srv = server(dir.path(), "userpass", "authorization { user: svc, password: \"pw-4f9a1c\" }");
    let good = NatsSettings { user: "svc".into(), password: Secret::new("pw-4f9a1c"), ..settings(srv.url()) };
    try_connect(&good).await.unwrap();
    connect_like_a_service(&good).await;
    let refused = try_connect(&settings(srv.url())).await.unwrap_err();
    assert!(refused.to_lowercase().contains("authorization"), "{refused}");
    let wrong = NatsSettings { password: Secret::new("not-pw-77"), ..good.clone() };
    let refused = try_connect(&wrong).await.unwrap_err();
    assert!(!refused.contains("not-pw-77") && !refused.contains("pw-4f9a1c"), "{refused}");

    // Token.
    let srv = server(dir.path(), "token", "authorization { token: \"tok-81b2e\" }");
    try_connect(&NatsSettings { token: Secret::new("tok-81b2e"), ..settings(srv.url()) }).await.unwrap();
    assert!(try_connect(&settings(srv.url())).await.is_err());
    assert!(try_connect(&NatsSettings { token: Secret::new("tok-other"), ..settings(srv.url()) }).await.is_err());

    // Nkey: the server knows only the public key.
    let user = nkeys::KeyPair::new_user();
    let srv =
        server(dir.path(), "nkey", &format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}", user.public_key()));
    try_connect(&NatsSettings { nkey_seed: Secret::new(user.seed().unwrap()), ..settings(srv.url()) }).await.unwrap();
    assert!(try_connect(&settings(srv.url())).await.is_err());
    let stranger = nkeys::KeyPair::new_user();
    assert!(try_connect(&NatsSettings { nkey_seed: Secret::new(stranger.seed().unwrap()), ..settings(srv.url()) })
        .await
        .is_err());
    let bad_seed = try_connect(&NatsSettings { nkey_seed: Secret::new("SUnot-a-seed-xyz"), ..settings(srv.url()) })
        .await
        .unwrap_err();
    assert!(bad_seed.contains("not a valid nkey seed") && !bad_seed.contains("SUnot-a-seed-xyz"), "{bad_seed}");

    // TLS with a CA made here, and a password on top.
    let pki = Pki::make(dir.path());
    let srv = server(
        dir.path(),
        "tls",
        &format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nauthorization {{ user: svc, password: \"pw-tls-5d\" }}",
            pki.server_cert.display(),
            pki.server_key.display()
        ),
    );
    let tls = NatsSettings {
        user: "svc".into(),
        password: Secret::new("pw-tls-5d"),
        tls_required: true,
        tls_ca_file: pki.ca.display().to_string(),
        ..settings(srv.url())
    };
    try_connect(&tls).await.unwrap();
    let untrusted = try_connect(&NatsSettings { tls_ca_file: String::new(), ..tls.clone() }).await.unwrap_err();
    assert!(!untrusted.contains("pw-tls-5d"), "{untrusted}");
    let missing =
        try_connect(&NatsSettings { tls_ca_file: "/nonexistent/ca.pem".into(), ..tls.clone() }).await.unwrap_err();
    assert!(missing.contains("nats.tls_ca_file /nonexistent/ca.pem"), "{missing}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files.
struct Pki {
    ca: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "inception test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
        let pki =
            Pki { ca: dir.join("ca.pem"), server_cert: dir.join("server.pem"), server_key: dir.join("server-key.pem") };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.server_cert, server.pem()).unwrap();
        std::fs::write(&pki.server_key, server_key.serialize_pem()).unwrap();
        pki
    }
}

#[test]
fn secrets_never_reach_logs_metrics_or_errors() {
    const PASSWORD: &str = "pw-never-logged-93d1";
    const WRONG: &str = "wrong-never-logged-2b7c";
    const S3_SECRET: &str = "s3-secret-never-logged-6e0f";
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    for sub in ["good", "wrong", "inurl"] {
        std::fs::create_dir_all(logs.join(sub)).unwrap();
    }
    let srv = server(dir.path(), "userpass", &format!("authorization {{ user: svc, password: \"{PASSWORD}\" }}"));
    let port = free_port();
    let base = |password: &str, url: String| {
        env_vars([
            ("NATS__URL", url),
            ("NATS__USER", "svc".to_string()),
            ("NATS__PASSWORD", password.to_string()),
            ("NATS__CONNECT_RETRY_MAX", "0.5s".to_string()),
            ("STORE__URL", format!("file://{}", dir.path().join("store").display())),
            ("STORE__S3_ACCESS_KEY_ID", "AKIDEXAMPLE".to_string()),
            ("STORE__S3_SECRET_ACCESS_KEY", S3_SECRET.to_string()),
            ("PREPROCESS__METRICS_ADDR", format!("127.0.0.1:{port}")),
        ])
    };

    // Right password: ready; nothing secret in logs or metrics.
    let mut good = Proc::spawn("inception-preprocess", &[], &base(PASSWORD, srv.url()), &logs.join("good"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http_get(port, "/readyz").is_ok_and(|(s, _)| s.contains("200")) {
        assert!(Instant::now() < deadline && good.is_running(), "never ready: {:?}", good.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http_get(port, "/metrics").unwrap();
    assert!(good.terminate(Duration::from_secs(20)).success(), "{:?}", good.output());
    let (out, err) = good.output();
    assert!(err.contains("connected to NATS"), "{err}");

    // Wrong password: refused, reported, retried; never printed.
    let mut wrong = Proc::spawn("inception-preprocess", &[], &base(WRONG, srv.url()), &logs.join("wrong"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while wrong.output().1.matches("cannot reach NATS").count() < 2 {
        assert!(Instant::now() < deadline && wrong.is_running(), "no retries reported: {:?}", wrong.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(wrong.terminate(Duration::from_secs(20)).success(), "{:?}", wrong.output());
    let (wrong_out, wrong_err) = wrong.output();
    assert!(wrong_err.to_lowercase().contains("authorization violation"), "{wrong_err}");

    // Credentials inside the URL: used, and redacted from what is logged.
    let url = format!("nats://svc:{PASSWORD}@127.0.0.1:{}", srv.port());
    let mut env = base(PASSWORD, url);
    env.retain(|(k, _)| !k.ends_with("NATS__USER") && !k.ends_with("NATS__PASSWORD"));
    let mut inurl = Proc::spawn("inception-preprocess", &[], &env, &logs.join("inurl"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !inurl.output().1.contains("connected to NATS") {
        assert!(Instant::now() < deadline && inurl.is_running(), "URL credentials not used: {:?}", inurl.output());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(inurl.terminate(Duration::from_secs(20)).success(), "{:?}", inurl.output());
    let (inurl_out, inurl_err) = inurl.output();
    assert!(inurl_err.contains("[redacted]@127.0.0.1"), "{inurl_err}");

    for (what, text) in [
        ("metrics", &metrics),
        ("stdout", &out),
        ("stderr", &err),
        ("stdout (wrong password)", &wrong_out),
        ("stderr (wrong password)", &wrong_err),
        ("stdout (URL credentials)", &inurl_out),
        ("stderr (URL credentials)", &inurl_err),
    ] {
        for secret in [PASSWORD, WRONG, S3_SECRET] {
            assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
        }
    }
    // Settings print safely too.
    let s: Settings =
        Settings::load(None, &[("nats.password".into(), PASSWORD.into()), ("nats.user".into(), "svc".into())]).unwrap();
    let printed = format!("{s:?}");
    assert!(!printed.contains(PASSWORD) && printed.contains("password: [redacted]"), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_refused_counted_and_survived() {
    use inception_proto::pipeline::{CheckpointReady, ShardReady};
    use inception_proto::Message;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let nats_server = LocalNats::start(&dir.path().join("nats")).unwrap();
    let (preprocess_port, eval_port) = (free_port(), free_port());
    let env = env_vars([
        ("NATS__URL", nats_server.url()),
        ("STORE__URL", format!("file://{}", dir.path().join("store").display())),
        ("PREPROCESS__METRICS_ADDR", format!("127.0.0.1:{preprocess_port}")),
        ("EVAL__METRICS_ADDR", format!("127.0.0.1:{eval_port}")),
    ]);
    let mut preprocess = Proc::spawn("inception-preprocess", &[], &env, &logs);
    let mut evaluator = Proc::spawn("inception-evaluator", &[], &env, &logs);
    let ready = |port: u16| http_get(port, "/readyz").is_ok_and(|(s, _)| s.contains("200"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(ready(preprocess_port) && ready(eval_port)) {
        assert!(Instant::now() < deadline, "{:?}\n{:?}", preprocess.output(), evaluator.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // the followers' consumers are bound

    let streams = Streams::new(async_nats::connect(nats_server.url()).await.unwrap(), "inception");
    streams.shards().await.unwrap();
    streams.checkpoints().await.unwrap();
    let stop = CancellationToken::new();
    let oversized = vec![0x0a; 200 * 1024];
    let shard = |uri: &str| {
        ShardReady {
            dataset: "flowers".into(),
            split: "train".into(),
            uri: uri.into(),
            records: 1,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let checkpoint = |uri: &str| CheckpointReady { metadata_uri: uri.into(), ..Default::default() }.encode_to_vec();
    let hostile_shards = [
        b"\xff\xff not protobuf".to_vec(),
        oversized.clone(),
        shard("datasets/flowers/../../etc/passwd"),
        shard("/etc/passwd"),
    ];
    let hostile_checkpoints = [
        b"\xff\xff not protobuf".to_vec(),
        oversized,
        checkpoint("/etc/passwd"),
        checkpoint("checkpoints/default/../../x.json"),
    ];
    for (i, payload) in hostile_shards.into_iter().enumerate() {
        let subject = streams.subjects.shards("flowers", "train");
        streams.publish_acked(&subject, payload.into(), &format!("shard-{i}"), &stop).await.unwrap();
    }
    for (i, payload) in hostile_checkpoints.into_iter().enumerate() {
        let subject = streams.subjects.checkpoints("default");
        streams.publish_acked(&subject, payload.into(), &format!("checkpoint-{i}"), &stop).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while scraped_value(preprocess_port, "inception_preprocess_rejected_messages_total") != Some(4.0)
        || scraped_value(eval_port, "inception_eval_rejected_messages_total") != Some(4.0)
    {
        assert!(
            Instant::now() < deadline,
            "not all refused and counted:\n{:?}\n{:?}",
            preprocess.output(),
            evaluator.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(preprocess.is_running() && evaluator.is_running());
    assert!(http_get(preprocess_port, "/healthz").unwrap().0.contains("200"));
    assert!(http_get(eval_port, "/healthz").unwrap().0.contains("200"));
    let (_, err) = preprocess.output();
    assert!(
        err.contains("is more than a ShardReady may have") && err.contains("is outside datasets/flowers/"),
        "{err}"
    );
    let (_, err) = evaluator.output();
    assert!(err.contains("announcement of /etc/passwd outside checkpoints/default/"), "{err}");
    assert!(!dir.path().join("store/eval").exists(), "nothing was evaluated");
    assert!(preprocess.terminate(Duration::from_secs(20)).success());
    assert!(evaluator.terminate(Duration::from_secs(20)).success());
}
