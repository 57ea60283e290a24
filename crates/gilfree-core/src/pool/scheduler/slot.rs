//! A slot: one thread that holds one worker lease at a time and runs tasks on it (steps in
//! `pool/README.md`, "Scheduler").

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use super::{failure_frame, trailer_peak_rss, End, Frames, Shared, State, Task};
use crate::error::SpawnError;
use crate::pool::process::Death;
use crate::pool::supervisor::Lease;
use crate::sync::unmodelled::MutexGuard;
use crate::wait::Wait;

/// Framing overhead of one message in the ring (its length prefix).
const FRAME_PREFIX: usize = 8;

/// Frames taken in one [`drain_frames`], so that a long run of them still lets `serve` look at
/// its pipeline, cancellations and timeouts between two drains.
const DRAIN_MAX: usize = 4096;

/// Consecutive short tasks (see `PoolConfig::short_depth`) before a worker's pipeline deepens.
const SHORT_STREAK: u32 = 4;

/// A task sent to this slot's worker.
struct Running {
    task: Task,
    frames: Frames,
    /// When the worker started it (for its timeout); `None` while another runs ahead of it.
    started: Option<Instant>,
    /// The whole message reached the ring (a send cut off by the worker's death did not).
    delivered: bool,
    /// The worker's start mark for it arrived: it may have run (invariant 6).
    begun: bool,
}

/// What to do with a lease once `serve` returns.
enum Next {
    /// Nothing left to do: give a healthy worker back to the engine.
    Release,
    /// Kill it (dead, killed, or used `max_tasks_per_worker` times) and get a fresh one.
    Replace,
}

/// Marks the slot gone when its thread ends, even by a panic (which must not leave tasks
/// without a completion, nor `completions()` waiting forever).
struct Exit<'a> {
    shared: &'a Shared,
    index: usize,
}

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let shared = self.shared;
        let mut st = shared.lock();
        if std::thread::panicking() {
            let frame = failure_frame("internal error: a gilfree scheduler thread panicked");
            let mine: Vec<u64> = st
                .flights
                .iter()
                .filter(|(_, f)| f.slot == self.index)
                .map(|(&id, _)| id)
                .collect();
            for id in mine {
                st.land(shared, id, Frames::new(), End::Broken(frame.clone()));
            }
            st.break_pool(shared, frame);
        }
        st.slots[self.index] = super::SlotState {
            gone: true,
            ..Default::default()
        };
        st.live_slots -= 1;
        shared.ready.notify_all();
    }
}

/// The slot thread.
pub(super) fn run(shared: &Arc<Shared>, index: usize) {
    let _exit = Exit { shared, index };
    loop {
        if shared.lock().wound_down() {
            return;
        }
        let Some(lease) = start_worker(shared, index) else {
            continue;
        };
        let next = serve(shared, index, &lease);
        shared.lock().slots[index] = Default::default();
        match (next, Arc::try_unwrap(lease)) {
            (Next::Release, Ok(lease)) => lease.release(),
            // Dropping an unreleased lease kills and reaps its worker.
            (_, lease) => drop(lease),
        }
    }
}

/// Steps 1–2: acquire a worker and run the initializer on it. `None`: no worker (the pool
/// broke, or shutdown killed it during init); the caller's loop decides what next.
fn start_worker(shared: &Shared, index: usize) -> Option<Arc<Lease>> {
    let lease = match shared.engine.acquire(&mut Wait::forever()) {
        Ok(lease) => Arc::new(lease),
        // Killed from outside before it was ready (SIGKILL: the OOM killer, a user, a chaos
        // test): nothing is wrong with the pool, so start another. A worker that fails its
        // start by itself (an exit code, a crash signal) would fail again: that breaks the pool.
        Err(SpawnError::Handshake {
            signal: Some(libc::SIGKILL | libc::SIGTERM),
            ..
        }) => return None,
        Err(e) => {
            let msg = format!("could not start a worker process: {e}");
            shared.lock().break_pool(shared, failure_frame(&msg));
            return None;
        }
    };
    let init = shared.config.init.as_deref();
    {
        let mut st = shared.lock();
        if st.broken.is_some() {
            drop(st);
            if let Ok(lease) = Arc::try_unwrap(lease) {
                lease.release();
            }
            return None;
        }
        st.slots[index].lease = Some(Arc::clone(&lease));
        st.slots[index].init = init.is_some();
    }
    let Some(init) = init else {
        return Some(lease);
    };
    let reply = match lease.send(init, &mut Wait::forever()) {
        Ok(()) => lease.recv(&mut Wait::forever()).map_err(|_| ()),
        Err(_) => Err(()),
    };
    let mut st = shared.lock();
    st.slots[index].init = false;
    let failure = match reply {
        Ok(frame) if frame.first() == Some(&0) => return Some(lease),
        Ok(frame) => frame,
        // Killed by `shutdown(kill_running)`: not the initializer's fault.
        Err(()) if st.slots[index].killed => {
            st.slots[index] = Default::default();
            return None;
        }
        Err(()) => {
            drop(st);
            let death = describe_exit(&lease);
            st = shared.lock();
            failure_frame(&format!("{death} while running the initializer"))
        }
    };
    st.slots[index] = Default::default();
    st.break_pool(shared, failure);
    None
}

/// The worker's death in [`Death`]'s words (reaps it if it has exited).
fn describe_exit(lease: &Lease) -> String {
    Death {
        pid: lease.pid(),
        exit: lease.exit_info(),
    }
    .to_string()
}

/// Steps 3–6: runs tasks on one worker until it must go.
fn serve(shared: &Shared, index: usize, lease: &Lease) -> Next {
    let config = &shared.config;
    // Only what fits in the ring is pipelined, so a send behind a running task never waits
    // for space, which the worker would only make after the running task, while it may be
    // waiting for us to read its frames: a deadlock.
    let room = lease.ring_capacity();
    let mut flight: VecDeque<Running> = VecDeque::new();
    let mut sent: u64 = 0;
    // The task whose timeout we enforced by killing the worker.
    let mut timed_out: Option<u64> = None;
    // The worker's peak resident set, from its last trailer (with `max_memory` only).
    let mut peak_rss: Option<u64> = None;
    // How many of the worker's last tasks in a row were short.
    let mut short_run: u32 = 0;
    // Reused by `drain_frames` for each frame it takes.
    let mut scratch = Vec::new();
    loop {
        let depth = if short_run >= SHORT_STREAK {
            config.depth.max(config.short_depth)
        } else {
            config.depth
        };
        // Step 3: take tasks for the pipeline.
        let mut batch: Vec<Task> = Vec::new();
        {
            let mut st = shared.lock();
            loop {
                let retiring = config
                    .max_tasks_per_worker
                    .is_some_and(|m| sent + batch.len() as u64 >= m)
                    || config
                        .max_memory
                        .is_some_and(|limit| peak_rss.is_some_and(|rss| rss > limit));
                if flight.is_empty() && batch.is_empty() {
                    if st.wound_down() {
                        return Next::Release;
                    }
                    if retiring {
                        return Next::Replace;
                    }
                    match st.pop(index) {
                        Some(task) => {
                            // Dispatch to an idle worker: it runs this task next.
                            st.slots[index].head = Some(task.id);
                            st.note_start(task.id, task.report_start);
                            batch.push(task);
                        }
                        None => st = wait(shared, st),
                    }
                    continue;
                }
                if retiring
                    || timed_out.is_some()
                    || st.slots[index].killed
                    || st.broken.is_some()
                    || flight.len() + batch.len() >= depth
                    || !st.may_pipeline(index)
                {
                    break;
                }
                let in_ring: usize = flight
                    .iter()
                    .map(|r| &r.task)
                    .chain(&batch)
                    .map(|t| t.payload.len() + FRAME_PREFIX)
                    .sum();
                // Beyond `depth`, only tasks nobody watches start (no `report_start`: a `map`
                // chunk, not a Future that `cancel()` could still take out of the queue).
                let within = flight.len() + batch.len() < config.depth;
                match st.front() {
                    Some(t)
                        if in_ring + t.payload.len() + FRAME_PREFIX <= room
                            && (within || !t.report_start) => {}
                    _ => break,
                }
                if let Some(task) = st.pop(index) {
                    batch.push(task);
                }
            }
        }
        // Step 4: send them, without the lock.
        let mut send_failed = false;
        for task in batch {
            let first = flight.is_empty();
            let delivered = !send_failed && lease.send(&task.payload, &mut Wait::forever()).is_ok();
            send_failed |= !delivered;
            sent += 1;
            flight.push_back(Running {
                task,
                frames: Frames::new(),
                started: first.then(Instant::now),
                delivered,
                begun: false,
            });
        }
        if send_failed {
            return bury(shared, index, lease, flight, timed_out, peak_rss);
        }
        // Step 5: the head's next frame, within its timeout.
        let Some(head) = flight.front_mut() else {
            continue;
        };
        let deadline = match timed_out {
            Some(_) => None,
            None => head
                .task
                .timeout
                .and_then(|t| head.started.and_then(|s| s.checked_add(t))),
        };
        let mut wait = Wait {
            deadline,
            ..Wait::forever()
        };
        // The worker's first message for a task is its start mark; then come the frames. The
        // mark is taken here, not as a turn of the loop: it must not give step 3 a chance to
        // pipeline that a frame would not (a task queued behind a running one waits for it).
        let received = loop {
            let last = head.begun && head.frames.len() + 1 >= head.task.frames as usize;
            match lease.recv_frame(&mut wait, last) {
                Ok(_mark) if !head.begun => head.begun = true,
                other => break other,
            }
        };
        match received {
            Ok(frame) => {
                head.frames.push(&frame);
                drop(frame); // freed by the thread that allocated it (see `Frames`)
                drain_frames(lease, head, &mut scratch);
                if head.frames.len() < head.task.frames as usize {
                    continue;
                }
                let now = Instant::now();
                let Some(done) = flight.pop_front() else {
                    continue;
                };
                let short = done
                    .started
                    .is_some_and(|s| now.saturating_duration_since(s) < config.short_task);
                short_run = if short {
                    short_run.saturating_add(1)
                } else {
                    0
                };
                if config.max_memory.is_some() {
                    // Step 9: over the limit, the worker retires once its pipeline is empty.
                    let reported = done.frames.last().and_then(trailer_peak_rss);
                    peak_rss = reported.or(peak_rss);
                }
                if let Some(next) = flight.front_mut() {
                    next.started = Some(now);
                }
                let mut st = shared.lock();
                st.land(shared, done.task.id, done.frames, End::Done);
                let next = flight.front().map(|r| r.task.id);
                st.slots[index].head = next;
                if let Some(r) = flight.front() {
                    let report = r.task.report_start && !st.is_cancelled(r.task.id);
                    st.note_start(r.task.id, report);
                }
                // Step 6: a task cancelled while it waited must not run: kill before (or as)
                // it starts, as `cancel` would have had it been running.
                if let Some(id) = next {
                    if st.is_cancelled(id) && !st.slots[index].killed {
                        st.slots[index].killed = true;
                        lease.kill();
                    }
                }
            }
            Err(crate::RecvError::Timeout) => {
                timed_out = Some(head.task.id);
                lease.kill();
                // Carry on receiving: whole frames sent before the kill still arrive, then
                // the death is seen (`bury`).
            }
            Err(_) => return bury(shared, index, lease, flight, timed_out, peak_rss),
        }
    }
}

/// The head task's frames already whole in the ring, taken at once (one look at the ring, one
/// publication of its read position) rather than a turn of `serve`'s loop each (a turn takes
/// the pool's lock): a chunk of tiny items arrives as a run of one frame per item. Never more
/// than the head still awaits (what follows belongs to the next task), nor more than
/// [`DRAIN_MAX`]; never waits. Anything else (a frame still arriving, the worker's death, an
/// error) is left to the loop's own receive, which finds it again.
fn drain_frames(lease: &Lease, head: &mut Running, scratch: &mut Vec<u8>) {
    let left = (head.task.frames as usize).saturating_sub(head.frames.len());
    if left == 0 {
        return;
    }
    let max = left.min(DRAIN_MAX);
    let frames = &mut head.frames;
    let _ = lease.recv_ready_frames(max, max == left, scratch, |frame| frames.push(frame));
}

/// Step 7: the worker is gone (it died, or we or `cancel`/`shutdown` killed it) and every
/// whole frame it sent has been received. Settles each task of the pipeline.
fn bury(
    shared: &Shared,
    index: usize,
    lease: &Lease,
    flight: VecDeque<Running>,
    timed_out: Option<u64>,
    peak_rss: Option<u64>,
) -> Next {
    lease.kill();
    let pid = lease.pid();
    let exit = lease.exit_info();
    let mut st = shared.lock();
    let killed_by_us = timed_out.is_some() || st.slots[index].killed;
    let mut flight = flight.into_iter();
    let mut requeue = Vec::new();
    if let Some(head) = flight.next() {
        let id = head.task.id;
        if Some(id) == timed_out {
            st.land(shared, id, head.frames, End::TimedOut { pid });
        } else if !head.delivered || (killed_by_us && !head.begun) {
            // Never reached the worker; or the worker was killed for another task (the one
            // ahead of this finished just as the kill landed) before it began this one.
            // Once its start mark arrived it may have run: it is not run again (invariant 6).
            requeue.push(head.task);
        } else {
            // Died under it, on its own or by a kill of ours for another task; with no frame
            // in hand nothing of it finished, so a retry may run it again (invariant 8).
            let crashes = st.crashes.get(&id).copied().unwrap_or(0);
            let retry = !killed_by_us
                && head.frames.is_empty()
                && crashes < head.task.retries
                && !st.is_cancelled(id);
            if retry {
                st.crashes.insert(id, crashes + 1);
                requeue.push(head.task);
            } else {
                let attempts = crashes + 1;
                st.land(
                    shared,
                    id,
                    head.frames,
                    End::Crashed {
                        pid,
                        exit,
                        attempts,
                        peak_rss,
                    },
                );
            }
        }
    }
    // Behind the head: never started.
    requeue.extend(flight.map(|r| r.task));
    st.requeue(requeue);
    st.slots[index].head = None;
    shared.work.notify_all();
    Next::Replace
}

fn wait<'g>(shared: &Shared, mut st: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
    st.idle_slots += 1;
    let mut st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
    st.idle_slots -= 1;
    st
}
