//! Worker output reaches the sink as whole lines, in order, before `recv` returns the message
//! the worker sent after printing; a crashing worker's last stderr is not lost.

mod pool_support;

use gilfree_core::output::Stream;
use gilfree_core::pool::Engine;
use gilfree_core::RecvError;
use pool_support::{config, step, Collect, Watchdog};

#[test]
fn child_entry() {
    pool_support::child_main();
}

#[test]
fn lines_arrive_whole_in_order_before_recv_returns() {
    let _dog = Watchdog::new("lines_arrive_whole_in_order_before_recv_returns");
    let sink = Collect::new();
    let engine = Engine::start(config(1), sink.clone()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    let pid = lease.pid();
    for round in 0..3 {
        lease.send(b"print", &mut step()).unwrap();
        assert_eq!(lease.recv(&mut step()).unwrap(), b"printed");
        // No waiting here: everything must already be in the sink.
        let (out, writes) = sink.text(pid, Stream::Stdout);
        let mut expected = String::new();
        for _ in 0..=round {
            for i in 0..200 {
                expected.push_str(&format!("out line {i}\n"));
            }
            expected.push_str("no newline yet");
        }
        // The child's test harness prints a header first; ours starts at the first line.
        let ours = &out[out.find("out line 0\n").expect("no output")..];
        assert_eq!(ours, expected, "round {round}");
        // Every write is whole lines, except the flushed partial line, which is its own write.
        for w in writes.iter().filter(|w| !w.starts_with(b"no newline yet")) {
            assert!(
                w.ends_with(b"\n"),
                "split line {:?}",
                String::from_utf8_lossy(w)
            );
        }
        let (err, _) = sink.text(pid, Stream::Stderr);
        assert!(err.contains("err line 49\n"));
        let n = err.lines().filter(|l| l.starts_with("err line")).count();
        assert_eq!(n, 50 * (round + 1));
    }
    lease.release();
    engine.shutdown();
}

#[test]
fn crash_output_is_delivered_before_disconnected() {
    let _dog = Watchdog::new("crash_output_is_delivered_before_disconnected");
    let sink = Collect::new();
    let engine = Engine::start(config(1), sink.clone()).unwrap();
    let lease = engine.acquire(&mut step()).unwrap();
    lease.send(b"die-loud", &mut step()).unwrap();
    assert!(matches!(
        lease.recv(&mut step()),
        Err(RecvError::Disconnected)
    ));
    let (err, _) = sink.text(lease.pid(), Stream::Stderr);
    assert!(
        err.contains("fatal: about to crash\npartial tail"),
        "{err:?}"
    );
    drop(lease);
    engine.shutdown();
}
