//! What operators rely on: metrics, TLS, health, limits, and the `health`
//! subcommand — against the real binary.

mod common;

use std::time::Duration;

use backchannel::pb;
use common::stream::*;
use common::*;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn sample(text: &str, prefix: &str) -> Option<f64> {
    metric_sample(text, prefix)
}

#[tokio::test]
async fn metrics_count_calls_subscriptions_deliveries_replays_and_the_writer() {
    let server = Server::start_with(Options::default().with_metrics()).await;
    let addr = server.metrics_addr();
    let mut w = world(&server).await;
    let mut s = subscribe(&mut w.admin.clone(), from(Some(0))).await;
    for i in 0..5 {
        w.iran
            .messages
            .send_message(send_req(&w.channel.id, &format!("m{i}")))
            .await
            .unwrap();
    }
    let h = head(&mut w.admin).await;
    let got = read_through(&mut s, h).await;
    assert_eq!(got.len() as u64, h);
    let missing = w
        .outsider
        .messages
        .get_message(pb::GetMessageRequest {
            message_id: got[1].message_id.clone(),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);

    let text = eventually("the deliveries to be counted", || {
        let addr = addr.clone();
        async move {
            let t = scrape(&addr).await;
            (sample(&t, "backchannel_events_delivered_total")? >= h as f64).then_some(t)
        }
    })
    .await;
    let send = "backchannel_rpc_requests_total{method=\"/backchannel.v1.MessageService/SendMessage\",code=\"OK\"}";
    assert_eq!(sample(&text, send), Some(5.0), "{text}");
    let not_found = "backchannel_rpc_requests_total{method=\"/backchannel.v1.MessageService/GetMessage\",code=\"NOT_FOUND\"}";
    assert_eq!(sample(&text, not_found), Some(1.0), "{text}");
    assert!(
        sample(
            &text,
            "backchannel_rpc_duration_seconds_count{method=\"/backchannel.v1.MessageService/SendMessage\"}"
        ) == Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "backchannel_subscriptions_open"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "backchannel_subscriber_lag_events_count").is_some_and(|n| n >= h as f64),
        "{text}"
    );
    assert_eq!(
        sample(&text, "backchannel_replays_total{reason=\"start\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "backchannel_writer_batch_size_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(&text, "backchannel_writer_commit_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "backchannel_store_errors_total{reason=\"STORE_UNAVAILABLE\"}"
        ),
        Some(0.0),
        "{text}"
    );
    drop(s);
    eventually("the subscription to close", || {
        let addr = addr.clone();
        async move {
            (sample(&scrape(&addr).await, "backchannel_subscriptions_open") == Some(0.0))
                .then_some(())
        }
    })
    .await;
}

/// Calls `path` with an empty request (and `token`, if any); returns the
/// status code.
async fn call_path(server: &Server, token: Option<&str>, path: &str) -> Code {
    let mut grpc = tonic::client::Grpc::new(server.connect().await);
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(Vec::new());
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("ascii"),
        );
    }
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path.to_string()).expect("path");
    match grpc.unary(req, path, raw::RawCodec).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn metrics_label_only_the_methods_served() {
    let server = Server::start_with(Options::default().with_metrics()).await;
    let addr = server.metrics_addr();
    // Paths no service serves, with and without a token: each would be a
    // metric series of its own, for as long as the process runs.
    let random = [
        "/probe-7f3a91.Service/Scan",
        "/wp-admin/setup-config.php",
        "/backchannel.v1.MessageService/NoSuchMethod-5c2e",
        "/grpc.health.v1.Health/Nope-0b1d",
    ];
    for path in random {
        for token in [None, Some(ADMIN_TOKEN)] {
            let code = call_path(&server, token, path).await;
            assert_ne!(code, Code::Ok, "{path}");
        }
    }
    // Methods served are labelled by name, answered or refused.
    const WHO_AM_I: &str = "/backchannel.v1.PartyService/WhoAmI";
    assert_eq!(
        call_path(&server, None, WHO_AM_I).await,
        Code::Unauthenticated
    );
    let mut health = HealthClient::new(server.connect().await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");

    // The health check came last, so once it is counted, all are.
    const CHECK: &str =
        "backchannel_rpc_requests_total{method=\"/grpc.health.v1.Health/Check\",code=\"OK\"}";
    let text = eventually("the calls to be counted", || {
        let addr = addr.clone();
        async move {
            let t = scrape(&addr).await;
            sample(&t, CHECK).is_some().then_some(t)
        }
    })
    .await;
    for path in random {
        let name = path.rsplit('/').next().unwrap_or(path);
        assert!(!text.contains(name), "{path} is a label:\n{text}");
    }
    let unknown: f64 = text
        .lines()
        .filter(|l| l.starts_with("backchannel_rpc_requests_total{method=\"unknown\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(unknown, (2 * random.len()) as f64, "{text}");
    let refused =
        format!("backchannel_rpc_requests_total{{method=\"{WHO_AM_I}\",code=\"UNAUTHENTICATED\"}}");
    assert_eq!(sample(&text, &refused), Some(1.0), "{text}");
    assert_eq!(sample(&text, CHECK), Some(1.0), "{text}");
}

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    Pki {
        ca: ca_cert.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

fn write_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A server with the PKI's certificate that requires client certificates
/// its CA signed.
async fn mtls_server(p: &Pki, dir: &std::path::Path) -> Server {
    Server::start_with(Options {
        args: vec![
            "--tls-cert".into(),
            write_file(dir, "server.pem", &p.server_cert),
            "--tls-key".into(),
            write_file(dir, "server.key", &p.server_key),
            "--tls-client-ca".into(),
            write_file(dir, "ca.pem", &p.ca),
        ],
        ..Options::default()
    })
    .await
}

async fn who_am_i_over_tls(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<bool, String> {
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut c = Clients::new(channel, Some(ADMIN_TOKEN));
    c.parties
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .map(|r| r.into_inner().admin)
        .map_err(|e| format!("call: {e}"))
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_get_in() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let server = mtls_server(&p, dir.path()).await;
    let ca = Certificate::from_pem(&p.ca);
    let with_cert = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .domain_name("localhost")
        .identity(Identity::from_pem(&p.client_cert, &p.client_key));
    assert_eq!(who_am_i_over_tls(server.addr, with_cert).await, Ok(true));

    let without_cert = ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    let refused = who_am_i_over_tls(server.addr, without_cert).await;
    assert!(
        refused.is_err(),
        "a client without a certificate got in: {refused:?}"
    );

    // Plaintext is refused too.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let r = Clients::new(ch, Some(ADMIN_TOKEN))
            .parties
            .who_am_i(pb::WhoAmIRequest {})
            .await;
        assert!(r.is_err(), "plaintext got an answer: {r:?}");
    }
}

async fn next_status(w: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(DEADLINE, w.message())
        .await
        .expect("a health change in time")
        .expect("watch")
        .expect("watch item")
        .status
}

/// A server on a fresh PostgreSQL database, its database's name, a health
/// client, and a watch of the overall status, once it has said SERVING.
async fn serving_on_postgres() -> (
    Server,
    String,
    HealthClient<tonic::transport::Channel>,
    tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) {
    let server = Server::start_postgres_replicas(1).await.remove(0);
    let db = server.database().expect("postgres").name.clone();
    let mut health = HealthClient::new(server.connect().await);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);
    (server, db, health, watch)
}

#[tokio::test]
async fn health_says_not_serving_while_the_database_is_unreachable_and_serving_after() {
    if !postgres_available() {
        return;
    }
    let (server, db, _health, mut watch) = serving_on_postgres().await;

    // The database stops taking connections and drops the ones it had.
    let name = db.clone();
    with_admin_db(move |c| {
        c.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            .unwrap();
        c.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .unwrap();
    });
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32
    );
    // Calls fail fast with UNAVAILABLE meanwhile.
    let mut admin = server.admin().await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        admin
            .channels
            .list_channels(pb::ListChannelsRequest::default()),
    )
    .await
    .expect("no hang");
    assert_eq!(r.unwrap_err().code(), Code::Unavailable);

    let name = db.clone();
    with_admin_db(move |c| {
        c.batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            .unwrap();
    });
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);
    admin
        .channels
        .list_channels(pb::ListChannelsRequest::default())
        .await
        .expect("recovered by itself");
}

/// A database that takes connections and reads but refuses writes (a
/// standby, or `default_transaction_read_only`) is a store that cannot
/// commit: the health probe must write to find that out, and writes are
/// refused with `STORE_READ_ONLY` until it clears.
#[tokio::test]
async fn health_says_not_serving_while_the_database_refuses_writes() {
    if !postgres_available() {
        return;
    }
    let (server, db, mut health, mut watch) = serving_on_postgres().await;

    let read_only = |on: bool| {
        let name = db.clone();
        with_admin_db(move |c| {
            c.batch_execute(&format!(
                "ALTER DATABASE {name} SET default_transaction_read_only = {on}"
            ))
            .unwrap();
            // Sessions take the setting when they start.
            c.query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&name],
            )
            .unwrap();
        })
    };
    read_only(true);
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32
    );
    let admin = server.admin().await;
    let refused = eventually("a write refused as read-only", || {
        let mut admin = admin.clone();
        async move {
            admin
                .parties
                .create_party(pb::CreatePartyRequest {
                    party_id: "iran".into(),
                    display_name: "Iran".into(),
                    kind: pb::party::Kind::State as i32,
                })
                .await
                .err()
                .filter(|s| reason(s) == "STORE_READ_ONLY")
        }
    })
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Several probes later (a probe and two expiry checks a second, each a
    // transaction of this database), the store is still not serving: a
    // probe that wrote nothing would have found it healthy.
    let commits = |name: String| {
        with_admin_db(move |c| {
            c.query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                &[&name],
            )
            .unwrap()
            .get::<_, i64>(0)
        })
    };
    let start = commits(db.clone());
    eventually("a few probes", || {
        let name = db.clone();
        async move { (commits(name) >= start + 12).then_some(()) }
    })
    .await;
    let now = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("check")
        .into_inner()
        .status;
    assert_eq!(
        now,
        ServingStatus::NotServing as i32,
        "serving while read-only"
    );

    read_only(false);
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);
    eventually("writes again", || {
        let mut admin = admin.clone();
        async move {
            admin
                .parties
                .create_party(pb::CreatePartyRequest {
                    party_id: "iran".into(),
                    display_name: "Iran".into(),
                    kind: pb::party::Kind::State as i32,
                })
                .await
                .ok()
        }
    })
    .await;
}

#[tokio::test]
async fn subscriptions_beyond_the_cap_are_resource_exhausted() {
    let server = Server::start_with(Options {
        args: vec!["--max-subscriptions".into(), "2".into()],
        ..Options::default()
    })
    .await;
    let mut admin = server.admin().await;
    let mut a = subscribe(&mut admin, from(None)).await;
    caught_up(&mut a).await;
    let mut b = subscribe(&mut admin, from(None)).await;
    caught_up(&mut b).await;
    assert_err(
        admin.messages.subscribe(from(None)).await,
        Code::ResourceExhausted,
        "TOO_MANY_SUBSCRIPTIONS",
    );
    drop(a);
    eventually("a slot to free up", || {
        let mut admin = admin.clone();
        async move { admin.messages.subscribe(from(None)).await.ok().map(|_| ()) }
    })
    .await;
}

#[tokio::test]
async fn the_health_subcommand_exits_zero_for_a_serving_server() {
    let server = Server::start().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args(["health", "--addr", &server.addr.to_string()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
        .args(["health", "--addr", &closed.to_string()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// `backchannel` (the command line) against `server`, with these args.
async fn cli(args: &[&str]) -> std::process::Output {
    tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_backchannel"))
            .args(args)
            .env_remove("BACKCHANNEL_ADDR")
            .env_remove("BACKCHANNEL_TOKEN")
            .env_remove("BACKCHANNEL_TOKEN_FILE")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("in time")
    .expect("run backchannel")
}

#[tokio::test]
async fn the_command_line_calls_over_tls_with_a_client_certificate() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| write_file(dir.path(), name, text);
    let server = mtls_server(&p, dir.path()).await;
    let addr = format!("https://localhost:{}", server.addr.port());
    let (ca, cert, key) = (
        file("ca.pem", &p.ca),
        file("client.pem", &p.client_cert),
        file("client.key", &p.client_key),
    );
    let tls = [
        "--addr",
        &addr,
        "--ca-cert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
    ];
    let out = cli(&[&tls[..], &["--token", ADMIN_TOKEN, "status"]].concat()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("you are   the admin"), "{stdout}");
    let out = cli(&[&tls[..], &["health"]].concat()).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");

    // Without its certificate the server ends the handshake (under TLS 1.3,
    // at the first call), and the error says where and why.
    let out = cli(&[
        "--addr",
        &addr,
        "--ca-cert",
        &ca,
        "--token",
        ADMIN_TOKEN,
        "status",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "error: UNAVAILABLE: cannot reach the server at {addr}"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_busy_port_and_a_dead_server_are_named_by_their_address() {
    let server = Server::start().await;
    let busy = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&[
        "--listen",
        &busy,
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--admin-token",
        ADMIN_TOKEN,
    ])
    .await;
    assert_ne!(out.status.code(), Some(0));
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains(&format!("cannot listen on {busy}")), "{log}");

    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = cli(&["health", "--addr", &closed.to_string()]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("http://{closed}")) && err.contains("refused"),
        "{err}"
    );
}

#[tokio::test]
async fn the_request_log_names_a_refusals_reason_and_an_unknown_method_is_named() {
    let server = Server::start().await;
    let mut w = world(&server).await;
    let m = w
        .iran
        .messages
        .send_message(send_req(&w.channel.id, "s"))
        .await
        .unwrap()
        .into_inner();
    let refused =
        w.us.messages
            .accept_message(move_req!(AcceptMessageRequest, m.id))
            .await;
    assert_err(refused, Code::PermissionDenied, "NOT_A_MEDIATOR");
    let line = eventually("the refusal in the request log", || async {
        server.log.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "rpc" && v["reason"] == "NOT_A_MEDIATOR").then(|| v.clone())
        })
    })
    .await;
    assert!(
        line["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("only a mediator on the route")),
        "the refusal's message is logged too: {line}"
    );

    // A method no service serves, or a service does not have:
    // UNIMPLEMENTED, saying which.
    for path in [
        "/backchannel.v1.MessageService/Teleport",
        "/backchannel.v2.MessageService/SendMessage",
    ] {
        let mut grpc = tonic::client::Grpc::new(server.connect().await);
        grpc.ready().await.unwrap();
        let mut req = tonic::Request::new(());
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
        );
        let got = grpc
            .unary(
                req,
                path.parse::<tonic::codegen::http::uri::PathAndQuery>()
                    .unwrap(),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(got.code(), Code::Unimplemented, "{path}: {got:?}");
        assert!(got.message().contains(path), "{path}: {got:?}");
    }
}
