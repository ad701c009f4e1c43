#![cfg(feature = "nats")]
//! The NATS bridge against a three-node JetStream cluster: a mirror to a
//! stream of three replicas keeps publishing, exactly once and in order,
//! while the stream's leader is stopped and restarted, round after round,
//! and the log keeps growing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backbone::nats::Mirror;
use backbone::{EventLog, Options};
use common::jetstream::{assert_subject_holds, keep_appending, stored, stream_info, SetOnDrop};
use common::nats::NatsCluster;
use common::{say, Checkout};

const WAIT: Duration = Duration::from_secs(60);
const SUBJECT: &str = "cluster.checkouts";
const STREAM: &str = "cluster_checkouts";

/// What node `i` says of the stream in its `/jsz`: the leader it knows of
/// and whether every replica is current.
fn stream_view(cluster: &mut NatsCluster, i: usize) -> Option<(String, bool)> {
    let node = cluster.node(i);
    if !node.is_running() {
        return None;
    }
    let jsz: serde_json::Value = serde_json::from_str(&node.monitor("/jsz?streams=true")?).ok()?;
    let stream = jsz["account_details"]
        .as_array()?
        .iter()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .find(|stream| stream["name"] == STREAM)?;
    let leader = stream["cluster"]["leader"].as_str()?.to_owned();
    let replicas = stream["cluster"]["replicas"].as_array();
    let current = replicas.is_some_and(|r| {
        r.len() == cluster_size(cluster) - 1 && r.iter().all(|r| r["current"] == true)
    });
    Some((leader, current))
}

fn cluster_size(cluster: &NatsCluster) -> usize {
    cluster.len()
}

/// The index of the node that leads the stream, once it says so itself
/// and sees both other replicas current.
fn stream_leader(cluster: &mut NatsCluster) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        for i in 0..cluster.len() {
            let name = cluster.node(i).name().to_owned();
            if let Some((leader, current)) = stream_view(cluster, i) {
                if leader == name && current {
                    return i;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node leads stream {STREAM} with every replica current: {:?}",
            (0..cluster.len())
                .map(|i| stream_view(cluster, i))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_mirror_keeps_publishing_through_a_node_restart_in_a_three_node_cluster() {
    const ROUNDS: usize = 3;
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    let began = Instant::now();
    let urls = cluster.urls();
    let tmp = tempfile::tempdir().unwrap();
    let local: EventLog<Checkout> = Options::new().open(tmp.path().join("local")).unwrap();
    let mirror = Mirror::new(&local, &urls, SUBJECT)
        .unwrap()
        .replicas(3)
        .start()
        .unwrap();
    let stop = AtomicBool::new(false);
    let mut rounds = Vec::new();
    std::thread::scope(|scope| {
        // Stops the appender however this scope ends, a failed assertion
        // included (the scope joins it before the panic goes on).
        let _stop = SetOnDrop(&stop);
        let appender = scope.spawn(|| keep_appending(&local, &stop, 0xc105));
        for round in 0..ROUNDS {
            // The mirror publishes before the stop.
            let target = mirror.position() + 500;
            let ended = |e| panic!("round {round}: the mirror ended: {e}");
            assert!(
                mirror.wait_for(target, WAIT).unwrap_or_else(ended),
                "round {round}: no progress before the stop: {mirror:?}"
            );
            let leader = stream_leader(&mut cluster);
            let name = cluster.node(leader).name().to_owned();
            cluster.node(leader).stop();
            let stopped = Instant::now();
            // Two of three replicas: the stream elects another leader and
            // takes the mirror's batches again.
            let target = mirror.position() + 500;
            assert!(
                mirror.wait_for(target, WAIT).unwrap_or_else(ended),
                "round {round}: the mirror made no progress with {name} stopped: {mirror:?}"
            );
            let resumed = stopped.elapsed();
            // Down a little longer, then back.
            std::thread::sleep(Duration::from_millis(500));
            cluster.node(leader).restart();
            cluster.wait_for_meta_leader();
            let target = local.durable_offset();
            assert!(
                mirror.wait_for(target, WAIT).unwrap_or_else(ended),
                "round {round}: the mirror did not catch up after {name} came back: {mirror:?}"
            );
            rounds.push((name, resumed, mirror.status().retries));
        }
        stop.store(true, Ordering::Relaxed);
        appender.join().unwrap();
    });
    let total = local.next_offset();
    assert!(mirror.wait_for(total, WAIT).unwrap(), "{mirror:?}");
    assert_eq!(mirror.lag(), 0, "{mirror:?}");
    let retries = mirror.status().retries;
    mirror.stop();
    mirror.join().unwrap();

    let messages = stored(&urls, STREAM, "cluster.checkouts.>");
    let replicas = stream_info(&urls, STREAM).config.num_replicas;
    assert_eq!(replicas, 3, "the stream's replicas");
    assert_subject_holds(&messages, &local);
    for (i, (name, resumed, retries)) in rounds.iter().enumerate() {
        say(format_args!(
            "round {i}: stopped stream leader {name}; the mirror published again \
             {resumed:.1?} after (retries so far {retries})"
        ));
    }
    say(format_args!(
        "three-node cluster, {ROUNDS} leader restarts in {:.1?}: {total} records \
         published once each ({retries} retries)",
        began.elapsed()
    ));
}
