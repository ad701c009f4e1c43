//! The `backbone` command-line tool, run as a program against logs these
//! tests make with the public API: healthy, damaged, held by a writer,
//! and being written while it follows them.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use backbone::inspect::Inspector;
use backbone::{Checkpoint, EventLog, Options, Raw};
use serde_json::Value;

fn backbone(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backbone"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The exit status, after checking that nothing panicked.
fn status(output: &Output) -> i32 {
    assert!(
        !stderr(output).contains("panicked"),
        "the tool panicked: {}",
        stderr(output)
    );
    output.status.code().expect("exited, not killed")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A log of `n` strings in small segments, with a consumer `audit` at 2.
fn strings(dir: &Path, n: u64) -> EventLog<String> {
    let log: EventLog<String> = Options::new()
        .segment_bytes(4096)
        .event_type("test.Note", 1)
        .open(dir)
        .unwrap();
    for i in 0..n {
        log.append(&format!("note {i}")).unwrap();
    }
    log.consumer("audit").unwrap().commit(2.min(n)).unwrap();
    log
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let output = backbone(&["--help"]);
    assert_eq!(status(&output), 0);
    let text = stdout(&output);
    assert!(text.contains("Examples:"), "{text}");
    assert!(text.contains("backbone tail -f"), "{text}");
    assert!(text.contains("Exit status"), "{text}");
    let output = backbone(&["dump", "--help"]);
    assert!(stdout(&output).contains("--since"));
    // A usage error is status 2, on stderr.
    let output = backbone(&["dump"]);
    assert_eq!(status(&output), 2);
    assert!(stderr(&output).contains("Usage"));
}

#[test]
fn ls_and_stat_describe_logs_as_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    drop(strings(&dir.path().join("orders"), 300));
    drop(strings(&dir.path().join("nested/payments"), 5));
    std::fs::create_dir(dir.path().join("not-a-log")).unwrap();

    let output = backbone(&["ls", path(dir.path())]);
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let text = stdout(&output);
    let orders = text.lines().find(|l| l.starts_with("orders")).unwrap();
    assert!(
        orders.contains(" 300 ") && orders.contains("0..300"),
        "{orders}"
    );
    assert!(orders.contains("audit@2"), "{orders}");
    assert!(
        text.lines().any(|l| l.starts_with("nested/payments")),
        "{text}"
    );
    assert!(!text.contains("not-a-log"));
    // No colour codes when stdout is not a terminal.
    assert!(!text.contains('\x1b'));

    let output = backbone(&["ls", path(dir.path()), "--json"]);
    let logs: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let logs = logs.as_array().unwrap();
    assert_eq!(logs.len(), 2);
    let orders = logs
        .iter()
        .find(|l| l["path"].as_str().unwrap().ends_with("orders"))
        .unwrap();
    assert_eq!(orders["records"], 300);
    assert_eq!(orders["codec"], "postcard");
    assert_eq!(orders["event_type"]["name"], "test.Note");
    assert_eq!(orders["consumers"][0]["lag"], 298);

    let log = dir.path().join("orders");
    let output = backbone(&["stat", path(&log), "--json"]);
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let stat: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let segments = Inspector::open(&log).unwrap().segments().unwrap();
    assert!(segments.len() > 1);
    assert_eq!(stat["segments"].as_array().unwrap().len(), segments.len());
    assert_eq!(stat["segments"][0]["end_offset"], segments[0].end_offset);
    assert_eq!(stat["next_offset"], 300);
    assert!(!stat["append_rate"].as_array().unwrap().is_empty());

    let output = backbone(&["stat", path(&log)]);
    let text = stdout(&output);
    assert!(text.contains("records 300 (offsets 0..300)"), "{text}");
    assert!(
        text.contains(&format!("segments {}", segments.len())),
        "{text}"
    );
    assert!(text.contains("append rate"), "{text}");
    let audit = text.lines().find(|l| l.starts_with("audit")).unwrap();
    assert!(audit.contains("consumer") && audit.contains(" 2 ") && audit.contains(" 298 "));
}

#[test]
fn dump_prints_ranges_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("orders");
    drop(strings(&log, 20));
    let output = backbone(&["dump", path(&log), "--from", "5", "--to", "8"]);
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let lines: Vec<String> = stdout(&output).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    // A postcard log with no registered type prints its payloads as hex:
    // the string's length, then its bytes.
    let expected = format!("06{}", hex(b"note 5"));
    assert!(
        lines[0].starts_with("5 ") && lines[0].ends_with(&expected),
        "{}",
        lines[0]
    );

    let output = backbone(&["dump", path(&log), "--format", "json", "--from", "19"]);
    let line: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(line["offset"], 19);
    assert_eq!(line["hex"], format!("07{}", hex(b"note 19")));

    // Times: everything was appended within the last hour and before now.
    let output = backbone(&["dump", path(&log), "--since", "1h"]);
    assert_eq!(stdout(&output).lines().count(), 20);
    let output = backbone(&["dump", path(&log), "--to", "@0"]);
    assert_eq!(stdout(&output).lines().count(), 0);
    let output = backbone(&["dump", path(&log), "--since", "tomorrow"]);
    assert_eq!(status(&output), 1);
    assert!(stderr(&output).contains("as a time"), "{}", stderr(&output));
    let output = backbone(&["dump", path(&log), "--from", "500"]);
    assert_eq!(status(&output), 1);
    assert!(stderr(&output).contains("0..20"), "{}", stderr(&output));

    // Raw bytes, as they were appended.
    let raw_dir = dir.path().join("raw");
    let raw: EventLog<Vec<u8>, Raw> = Options::new().open_with_codec(&raw_dir, Raw).unwrap();
    raw.append(&b"alpha".to_vec()).unwrap();
    raw.append(&b"beta".to_vec()).unwrap();
    drop(raw);
    let output = backbone(&["dump", path(&raw_dir), "--format", "raw"]);
    assert_eq!(output.stdout, b"alpha\nbeta\n");
    let output = backbone(&["dump", path(&raw_dir), "--format", "hex"]);
    assert!(stdout(&output)
        .lines()
        .next()
        .unwrap()
        .ends_with(&hex(b"alpha")));
}

#[cfg(feature = "json")]
#[test]
fn a_json_log_prints_its_events_as_json() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u64,
        sku: String,
    }
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<Order, backbone::Json> = Options::new()
        .open_with_codec(dir.path(), backbone::Json)
        .unwrap();
    log.append(&Order {
        id: 7,
        sku: "SKU-1".into(),
    })
    .unwrap();
    drop(log);
    let output = backbone(&["dump", path(dir.path()), "--format", "json"]);
    let line: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(line["value"], serde_json::json!({"id": 7, "sku": "SKU-1"}));
    let output = backbone(&["tail", path(dir.path())]);
    assert!(stdout(&output).contains(r#"{"id":7,"sku":"SKU-1"}"#));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn missing_paths_and_directories_that_are_not_logs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    for command in ["stat", "dump", "tail", "verify", "consumers"] {
        let output = backbone(&[command, path(&missing)]);
        assert_eq!(status(&output), 1, "{command}");
        assert!(
            stderr(&output).contains("no such file or directory"),
            "{command}: {}",
            stderr(&output)
        );
        assert!(stdout(&output).is_empty());
    }
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    let output = backbone(&["stat", path(dir.path())]);
    assert_eq!(status(&output), 1);
    assert!(stderr(&output).contains("is not a backbone log"));
    // A write command does not create a log where there is none.
    let output = backbone(&["truncate", path(&missing), "--before", "1"]);
    assert_eq!(status(&output), 1);
    assert!(!missing.exists());
    let output = backbone(&["ls", path(&missing)]);
    assert_eq!(status(&output), 1);
}

#[test]
fn verify_reports_damage_by_file_and_position_and_says_so_in_its_status() {
    let dir = tempfile::tempdir().unwrap();
    drop(strings(dir.path(), 300));
    let output = backbone(&["verify", path(dir.path())]);
    assert_eq!(status(&output), 0, "{}", stdout(&output));
    assert!(stdout(&output).contains("ok: 300 records"));

    // A flipped payload byte in the first record of the first segment.
    let segment = &Inspector::open(dir.path()).unwrap().segments().unwrap()[0];
    let mut bytes = std::fs::read(&segment.path).unwrap();
    let frame = Inspector::open(dir.path())
        .unwrap()
        .frames(backbone::Start::Beginning)
        .next()
        .unwrap()
        .unwrap()
        .position;
    bytes[frame as usize + 30] ^= 0xff;
    std::fs::write(&segment.path, &bytes).unwrap();

    let output = backbone(&["verify", path(dir.path())]);
    assert_eq!(status(&output), 3);
    let text = stdout(&output);
    assert!(
        text.contains(&format!("{} at byte {frame}", segment.path.display())),
        "{text}"
    );
    assert!(text.contains("1 damaged places"), "{text}");
    // Reading the damaged record is an error naming the file, not a panic.
    let output = backbone(&["dump", path(dir.path())]);
    assert_eq!(status(&output), 1);
    assert!(stderr(&output).contains(&segment.path.display().to_string()));
}

#[test]
fn a_log_held_by_a_writer_can_be_read_but_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let log = strings(dir.path(), 300);
    for args in [
        vec!["stat", path(dir.path())],
        vec!["dump", path(dir.path()), "--from", "299"],
        vec!["verify", path(dir.path())],
        vec!["consumers", path(dir.path())],
    ] {
        let output = backbone(&args);
        assert_eq!(status(&output), 0, "{args:?}: {}", stderr(&output));
    }
    for args in [
        vec!["consumers", path(dir.path()), "set", "audit", "5"],
        vec!["consumers", path(dir.path()), "delete", "audit"],
        vec!["truncate", path(dir.path()), "--before", "200", "--force"],
    ] {
        let output = backbone(&args);
        assert_eq!(status(&output), 1, "{args:?}");
        let message = stderr(&output);
        assert!(
            message.contains("open for writing in another process")
                && message.contains("stop the writer first"),
            "{args:?}: {message}"
        );
    }
    // Nothing changed.
    assert_eq!(log.consumer("audit").unwrap().position(), 2);
    assert_eq!(log.first_offset(), 0);
}

#[test]
fn consumers_are_listed_moved_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    drop(strings(dir.path(), 10));
    let output = backbone(&["consumers", path(dir.path()), "set", "mailer", "7"]);
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    assert!(stdout(&output).contains("mailer: position 0 -> 7"));
    let output = backbone(&["consumers", path(dir.path())]);
    let text = stdout(&output);
    let mailer = text.lines().find(|l| l.starts_with("mailer")).unwrap();
    assert!(mailer.contains(" 7 ") && mailer.contains(" 3 "), "{mailer}");

    let output = backbone(&["consumers", path(dir.path()), "set", "audit", "11"]);
    assert_eq!(status(&output), 1);
    let output = backbone(&["consumers", path(dir.path()), "delete", "audit"]);
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let output = backbone(&["consumers", path(dir.path()), "delete", "audit"]);
    assert_eq!(status(&output), 1);
    assert!(stderr(&output).contains("no consumer audit"));

    let log: EventLog<String> = Options::new()
        .event_type("test.Note", 1)
        .open(dir.path())
        .unwrap();
    let names: Vec<String> = log
        .consumers()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["mailer"]);
    assert_eq!(log.consumer("mailer").unwrap().position(), 7);
}

#[test]
fn a_reader_whose_position_lives_elsewhere_is_refused_and_that_log_named() {
    let dir = tempfile::tempdir().unwrap();
    let (source_dir, output_dir) = (dir.path().join("orders"), dir.path().join("totals"));
    let source: EventLog<u64> = EventLog::open(&source_dir).unwrap();
    let output_log: EventLog<u64> = EventLog::open(&output_dir).unwrap();
    source.append_batch(&[1, 2, 3, 4]).unwrap();
    let checkpoint = Checkpoint::new("summer").source(&source, 3).unwrap();
    output_log.append_committing(&[6], &checkpoint).unwrap();
    drop((source, output_log));

    let output = backbone(&["consumers", path(&source_dir)]);
    let text = stdout(&output);
    let summer = text.lines().find(|l| l.starts_with("summer")).unwrap();
    assert!(
        summer.contains(" 3 ") && summer.contains("totals"),
        "{summer}"
    );
    for args in [
        vec!["consumers", path(&source_dir), "set", "summer", "1"],
        vec!["consumers", path(&source_dir), "delete", "summer"],
    ] {
        let output = backbone(&args);
        assert_eq!(status(&output), 1);
        let message = stderr(&output);
        assert!(message.contains("registered reader"), "{message}");
        assert!(message.contains(path(&output_dir)), "{message}");
    }
    assert_eq!(
        Inspector::open(&source_dir).unwrap().readers().unwrap()[0].position,
        Some(3)
    );
}

#[test]
fn truncate_keeps_what_readers_need_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    drop(strings(dir.path(), 1000));
    let segments = Inspector::open(dir.path()).unwrap().segments().unwrap();
    assert!(segments.len() > 4);
    let cut = segments[2].base_offset;

    let output = backbone(&["truncate", path(dir.path()), "--before", &cut.to_string()]);
    assert_eq!(status(&output), 1);
    let message = stderr(&output);
    assert!(message.contains("consumer audit at 2"), "{message}");
    assert!(message.contains("nothing was removed"), "{message}");
    assert_eq!(Inspector::open(dir.path()).unwrap().first_offset(), 0);

    let output = backbone(&[
        "truncate",
        path(dir.path()),
        "--before",
        &(cut + 1).to_string(),
        "--force",
    ]);
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains(&format!("removed offsets 0..{cut}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("consumer audit at 2 lost offsets 2..{cut}")),
        "{text}"
    );
    assert_eq!(Inspector::open(dir.path()).unwrap().first_offset(), cut);

    // With every consumer past the cut, no force is needed.
    let output = backbone(&["consumers", path(dir.path()), "set", "audit", "999"]);
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    let next = segments[3].base_offset;
    let output = backbone(&["truncate", path(dir.path()), "--before", &next.to_string()]);
    assert_eq!(status(&output), 0, "{}", stderr(&output));
    assert_eq!(Inspector::open(dir.path()).unwrap().first_offset(), next);
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    drop(strings(dir.path(), 20_000));
    let mut child = Command::new(env!("CARGO_BIN_EXE_backbone"))
        .args(["dump", path(dir.path())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("0 "), "{first}");
    // The reader is gone: the tool must stop without an error.
    let status = child.wait().unwrap();
    let mut errors = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut errors)
        .unwrap();
    assert!(status.success(), "{status:?}: {errors}");
    assert!(errors.is_empty(), "{errors}");
}

#[test]
fn tail_prints_the_last_records_and_follows_a_live_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = strings(dir.path(), 50);
    log.sync().unwrap();
    let output = backbone(&["tail", path(dir.path()), "-n", "3", "--format", "json"]);
    let offsets: Vec<u64> = stdout(&output)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(offsets, [47, 48, 49]);

    let mut child = Command::new(env!("CARGO_BIN_EXE_backbone"))
        .args([
            "tail",
            "-f",
            "-n",
            "1",
            path(dir.path()),
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let value: Value = serde_json::from_str(&line).unwrap();
            if tx.send(value["offset"].as_u64().unwrap()).is_err() {
                break;
            }
        }
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).unwrap(), 49);
    // Records appended while it follows, by the writer that holds the log.
    for i in 50..60 {
        log.append(&format!("note {i}")).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < 10 && Instant::now() < deadline {
        if let Ok(offset) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(offset);
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(seen, (50..60).collect::<Vec<u64>>());
}
