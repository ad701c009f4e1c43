//! The NATS test harness (`tests/common/nats.rs`) itself: the servers it
//! starts are real, JetStream-enabled, keep acknowledged messages across a
//! SIGKILL and a restart on the same port, and form a cluster that keeps
//! working with a node down. The tests speak the NATS text protocol over a
//! plain `TcpStream`, so they check the harness without the bridge or a
//! client library.
//!
//! Without a nats-server >= 2.12 each test prints the skip notice and
//! passes, unless `BACKBONE_NATS_REQUIRED=1` (`scripts/test` sets it).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::nats::{parse_version, version_supported, NatsCluster, NatsServer};
use serde_json::Value;

/// A minimal NATS client: CONNECT, one inbox subscription, and
/// request/reply over it, one request at a time.
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    info: Value,
}

const INBOX: &str = "_INBOX.harness";

impl Client {
    fn connect(port: u16) -> Client {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let writer = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(writer.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).expect("read the INFO line");
        let json = line
            .strip_prefix("INFO ")
            .unwrap_or_else(|| panic!("the server began with {line:?}, not INFO"));
        let info: Value = serde_json::from_str(json.trim_end()).expect("INFO holds JSON");
        let mut client = Client {
            writer,
            reader,
            info,
        };
        // `headers` lets the server answer a request nobody serves with a
        // 503 status message at once instead of leaving it to time out.
        client.send(&format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\
             \"no_responders\":true}}\r\nSUB {INBOX} 1\r\nPING\r\n"
        ));
        loop {
            match client.line().as_str() {
                "PONG" => return client,
                "PING" => client.send("PONG\r\n"),
                "+OK" => {}
                other => panic!("unexpected {other:?} while connecting"),
            }
        }
    }

    fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).expect("write");
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read a line");
        assert!(!line.is_empty(), "the server closed the connection");
        line.trim_end().to_owned()
    }

    /// Publishes `payload` to `subject` and returns the reply's payload
    /// (a no-responders reply comes back as its header block).
    fn request(&mut self, subject: &str, payload: &str) -> String {
        self.send(&format!(
            "PUB {subject} {INBOX} {}\r\n{payload}\r\n",
            payload.len()
        ));
        loop {
            let line = self.line();
            let words: Vec<&str> = line.split(' ').collect();
            match words[0] {
                "PING" => self.send("PONG\r\n"),
                "+OK" => {}
                // MSG <subject> <sid> <size> / HMSG <subject> <sid> <hdr> <total>
                "MSG" | "HMSG" => {
                    let size: usize = words.last().unwrap().parse().unwrap();
                    let mut body = vec![0; size + 2];
                    self.reader.read_exact(&mut body).expect("read a message");
                    body.truncate(size);
                    return String::from_utf8(body).expect("a UTF-8 reply");
                }
                _ => panic!("unexpected {line:?} after publishing to {subject}"),
            }
        }
    }

    /// A JetStream API request whose reply is JSON without an error.
    fn js(&mut self, subject: &str, payload: &str) -> Result<Value, String> {
        let reply = self.request(subject, payload);
        match serde_json::from_str::<Value>(&reply) {
            Ok(json) if json.get("error").is_none() => Ok(json),
            _ => Err(reply),
        }
    }
}

/// Retries `op` until it succeeds or `timeout` passes, then returns its
/// last result; for what a cluster does not do at once after losing a node.
fn retry<T>(timeout: Duration, mut op: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match op() {
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(100)),
            result => return result,
        }
    }
}

fn stream_messages(info: &Value) -> u64 {
    info["state"]["messages"]
        .as_u64()
        .unwrap_or_else(|| panic!("stream info without state.messages: {info}"))
}

#[test]
fn versions_are_parsed_and_old_servers_refused() {
    assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
    assert_eq!(parse_version("nats-server: v2.12.0-RC.3"), Some((2, 12, 0)));
    assert_eq!(parse_version("nats-server: v3.0"), Some((3, 0, 0)));
    assert_eq!(parse_version("Usage: nats-server [options]"), None);
    assert_eq!(parse_version(""), None);
    // Debian bookworm's /usr/sbin/nats-server.
    assert!(!version_supported(
        parse_version("nats-server: v2.9.10").unwrap()
    ));
    assert!(!version_supported((2, 11, 9)));
    assert!(version_supported((2, 12, 0)));
    assert!(version_supported((3, 0, 0)));
}

#[test]
fn a_server_starts_with_jetstream_synced_on_every_write() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    assert!(server.is_running());
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));

    let client = Client::connect(server.port());
    assert_eq!(
        client.info["jetstream"],
        Value::Bool(true),
        "{}",
        client.info
    );
    assert_eq!(client.info["port"], server.port(), "{}", client.info);
    assert_eq!(client.info["server_name"], "backbone", "{}", client.info);
    let version = client.info["version"].as_str().expect("INFO has a version");
    assert!(
        version_supported(parse_version(&format!("v{version}")).unwrap()),
        "{version}"
    );

    // The config took: the store is in the server's directory and
    // JetStream fsyncs every write.
    let jsz: Value = serde_json::from_str(&server.monitor("/jsz").expect("/jsz")).unwrap();
    assert_eq!(jsz["config"]["sync_always"], true, "{jsz}");
    let store = jsz["config"]["store_dir"].as_str().unwrap();
    assert!(
        store.starts_with(server.store_dir().to_str().unwrap()),
        "{store} is not in {}",
        server.store_dir().display()
    );
    assert!(server.log().contains("Server is ready"), "{}", server.log());
}

#[test]
fn a_killed_server_restarts_on_its_port_with_its_messages() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let port = server.port();
    let mut client = Client::connect(port);
    client
        .js(
            "$JS.API.STREAM.CREATE.ORDERS",
            r#"{"name":"ORDERS","subjects":["orders.>"],"storage":"file","num_replicas":1}"#,
        )
        .expect("create a stream");
    let ack = client.js("orders.1", "checkout 1").expect("publish");
    assert_eq!(ack["seq"], 1, "{ack}");

    // A crash right after the acknowledgement: sync_interval: always means
    // the message was on disk before the ack was sent.
    server.kill();
    assert!(!server.is_running());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "something still listens on {port} after the kill"
    );

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    let mut client = Client::connect(port);
    let info = client
        .js("$JS.API.STREAM.INFO.ORDERS", "")
        .expect("the stream is still there");
    assert_eq!(stream_messages(&info), 1, "{info}");
    let log = server.log();
    assert!(log.contains("==== harness: killed (SIGKILL)"), "{log}");
    assert_eq!(log.matches("Server is ready").count(), 2, "{log}");
}

#[test]
fn a_stopped_server_exits_gracefully() {
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    server.stop();
    assert!(!server.is_running());
    let log = server.log();
    // nats-server logs these on SIGTERM, and a SIGKILL leaves no chance to.
    assert!(log.contains("Trapped \"terminated\" signal"), "{log}");
    assert!(log.contains("Server Exiting"), "{log}");
    assert!(!log.contains("no exit 5 s after SIGTERM"), "{log}");

    server.restart();
    let client = Client::connect(server.port());
    assert_eq!(client.info["jetstream"], true, "{}", client.info);
}

#[test]
fn a_cluster_elects_a_leader_and_survives_a_node_restart() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    assert_eq!(cluster.len(), 3);
    let ports: Vec<u16> = (0..3).map(|i| cluster.node(i).port()).collect();
    assert_eq!(
        cluster.urls(),
        format!(
            "nats://127.0.0.1:{},nats://127.0.0.1:{},nats://127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    );
    let leader = cluster.wait_for_meta_leader();
    for i in 0..3 {
        let node = cluster.node(i);
        assert_eq!(node.name(), format!("n{}", i + 1));
        let jsz: Value = serde_json::from_str(&node.monitor("/jsz").unwrap()).unwrap();
        let meta = &jsz["meta_cluster"];
        assert_eq!(meta["name"], "backbone-test", "{jsz}");
        assert_eq!(meta["cluster_size"], 3, "{jsz}");
        assert_eq!(meta["leader"], format!("n{}", leader + 1), "{jsz}");
        assert_eq!(jsz["config"]["sync_always"], true, "{jsz}");
    }

    // A replicated stream, written through one node.
    let mut client = Client::connect(ports[0]);
    client
        .js(
            "$JS.API.STREAM.CREATE.ORDERS",
            r#"{"name":"ORDERS","subjects":["orders.>"],"storage":"file","num_replicas":3}"#,
        )
        .expect("create a stream of 3 replicas");
    // The stream's leader may be on another node, and its interest in
    // `orders.>` reaches this node a moment after the create's reply: a
    // publish before that finds no responders (status 503). So does a
    // real client's; the bridge's tests must allow for it too.
    retry(Duration::from_secs(5), || {
        client.js("orders.1", "checkout 1")
    })
    .expect("publish");

    // Stop the meta leader: another takes over, and the stream still
    // takes writes (once its own leader, if it was there, has moved).
    cluster.node(leader).stop();
    let second = cluster.wait_for_meta_leader();
    assert_ne!(second, leader);
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    let mut client = Client::connect(ports[survivor]);
    retry(Duration::from_secs(15), || {
        client.js("orders.2", "checkout 2")
    })
    .expect("publish with a node down");

    // Back with the same port and store: it rejoins, and the stream has
    // both messages wherever it is asked.
    cluster.node(leader).restart();
    assert!(cluster.node(leader).is_running());
    assert_eq!(cluster.node(leader).port(), ports[leader]);
    cluster.wait_for_meta_leader();
    let mut client = Client::connect(ports[leader]);
    let info = retry(Duration::from_secs(15), || {
        let info = client.js("$JS.API.STREAM.INFO.ORDERS", "")?;
        match stream_messages(&info) {
            2 => Ok(info),
            _ => Err(info.to_string()),
        }
    })
    .expect("both messages, asked through the restarted node");
    assert_eq!(info["cluster"]["name"], "backbone-test", "{info}");
}
