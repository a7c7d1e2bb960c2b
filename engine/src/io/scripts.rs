//! Deactivate scripts of expelled GS providers (docs/group-services.md §6.5), run
//! outside the engine thread: each in its own process, watched by a short-lived
//! thread that kills it at its time limit and hands the result back through a queue
//! and the engine's [`Waker`]. The host decides which script runs and what its result
//! means; this only runs it.
//!
//! The script runs as the user and group of the client that registered it (its
//! `SO_PEERCRED`): a client allowed to connect must not get the daemon's privileges.
//! Arguments: `FLAG GROUP INSTANCE REASON`; stdin, stdout and stderr are `/dev/null`;
//! the working directory is `/`. Success is exit status 0 within the time limit. The
//! script leads a process group of its own, and the whole group is killed (SIGKILL)
//! at the limit, so a script's own children cannot outlive it. It starts with no
//! signal blocked (the daemon blocks its termination signals in every thread).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringcast_proto::gs::ScriptRun;

use super::signal::Waker;

/// Scripts running at once; more wait in [`MAX_WAITING`].
pub const MAX_RUNNING: usize = 16;
/// Scripts waiting for a slot; beyond that a script fails at once (every queue is
/// bounded).
pub const MAX_WAITING: usize = 1024;
/// How often a watcher looks at its script.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// The user and group a script runs as.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// The scripts started and not yet reported.
#[derive(Debug)]
pub struct ScriptRunner {
    waker: Waker,
    done: Arc<Mutex<VecDeque<(ScriptRun, bool)>>>,
    running: usize,
    waiting: VecDeque<(ScriptRun, RunAs)>,
}

impl ScriptRunner {
    pub fn new(waker: Waker) -> ScriptRunner {
        ScriptRunner {
            waker,
            done: Arc::default(),
            running: 0,
            waiting: VecDeque::new(),
        }
    }

    /// Starts `run` as `run_as` (or queues it). `Err(run)` when it cannot run at all:
    /// the queue is full or no user is known (report it failed).
    pub fn start(&mut self, run: ScriptRun, run_as: Option<RunAs>) -> Result<(), Box<ScriptRun>> {
        let Some(run_as) = run_as else {
            return Err(Box::new(run));
        };
        if self.running < MAX_RUNNING {
            self.spawn(run, run_as);
            return Ok(());
        }
        if self.waiting.len() >= MAX_WAITING {
            return Err(Box::new(run));
        }
        self.waiting.push_back((run, run_as));
        Ok(())
    }

    /// A finished script and whether it succeeded; starts a waiting one in its place.
    pub fn poll_done(&mut self) -> Option<(ScriptRun, bool)> {
        let done = self
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()?;
        self.running -= 1;
        if let Some((run, run_as)) = self.waiting.pop_front() {
            self.spawn(run, run_as);
        }
        Some(done)
    }

    /// Scripts started or waiting, not reported yet.
    pub fn outstanding(&self) -> usize {
        self.running + self.waiting.len()
    }

    fn spawn(&mut self, run: ScriptRun, run_as: RunAs) {
        self.running += 1;
        let done = self.done.clone();
        let waker = self.waker.clone();
        let copy = run.clone();
        let watcher = std::thread::Builder::new()
            .name("gs-script".into())
            .spawn(move || {
                let ok = run_script(&run, run_as);
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((run, ok));
                waker.wake();
            });
        if let Err(e) = watcher {
            // No thread: the script is reported failed at the next poll.
            tracing::warn!(error = %e, "cannot start a deactivate script watcher");
            self.done
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back((copy, false));
        }
    }
}

/// Runs one script to its end or its time limit. True: exit status 0 in time.
fn run_script(run: &ScriptRun, run_as: RunAs) -> bool {
    let instance = run.provider.instance.to_string();
    let mut command = Command::new(&run.script);
    command
        .arg(OsStr::from_bytes(&run.flag))
        .arg(OsStr::from_bytes(run.group.as_bytes()))
        .arg(&instance)
        .arg(run.reason)
        .uid(run_as.uid)
        .gid(run_as.gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // The daemon blocks SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 in every thread, and a
    // child inherits the mask across exec: the script starts with none blocked.
    // SAFETY: runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: sigemptyset and pthread_sigmask (sigprocmask) are, and
    // nothing here allocates or takes a lock.
    unsafe {
        command.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(script = %run.script, error = %e, "deactivate script did not start");
            return false;
        }
    };
    let deadline = Instant::now() + Duration::from_millis(u64::from(run.time_limit_ms));
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                tracing::info!(script = %run.script, %status, "deactivate script ended");
                return status.success();
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(WATCH_EVERY),
            Ok(None) | Err(_) => {
                tracing::warn!(
                    script = %run.script,
                    limit_ms = run.time_limit_ms,
                    "deactivate script killed at its time limit"
                );
                kill_group(&child);
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// SIGKILL to the script's process group (its id is the script's pid).
fn kill_group(child: &std::process::Child) {
    let Ok(pgid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: a plain syscall; the group is the unreaped child's own (its pid cannot
    // be reused before `wait`).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_proto::cpg::GroupName;
    use ringcast_proto::gs::ProviderId;

    fn run(script: &str, time_limit_ms: u32) -> ScriptRun {
        ScriptRun {
            client: 1,
            script: script.into(),
            group: GroupName::new(b"g").unwrap(),
            seq: 1,
            provider: ProviderId {
                node: 1,
                instance: 2,
            },
            flag: bytes::Bytes::from_static(b"flag"),
            reason: "expelled",
            time_limit_ms,
        }
    }

    fn me() -> RunAs {
        // SAFETY: getuid and getgid cannot fail and have no preconditions.
        unsafe {
            RunAs {
                uid: libc::getuid(),
                gid: libc::getgid(),
            }
        }
    }

    /// Waits (bounded) for every started script's result, by script path.
    fn results(runner: &mut ScriptRunner, want: usize) -> Vec<(String, bool)> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut out = Vec::new();
        while out.len() < want {
            assert!(Instant::now() < deadline, "scripts did not end: {out:?}");
            match runner.poll_done() {
                Some((run, ok)) => out.push((run.script, ok)),
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        out.sort();
        out
    }

    /// Blocks SIGUSR2 in this thread (and the watcher threads it spawns), as the
    /// daemon blocks its signals: the scripts must not inherit it.
    fn block_a_signal() {
        // SAFETY: fills a set we own and changes this thread's mask only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR2);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
    }

    #[test]
    fn scripts_succeed_fail_and_are_killed_at_their_limit() {
        block_a_signal();
        let mut runner = ScriptRunner::new(Waker::new().unwrap());
        let dir = std::env::temp_dir().join(format!("rc-scripts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Records its arguments, so the interface (FLAG GROUP INSTANCE REASON) is checked.
        let args = dir.join("args");
        let record = dir.join("record.sh");
        std::fs::write(
            &record,
            format!("#!/bin/sh\necho \"$@\" > {}\n", args.display()),
        )
        .unwrap();
        std::fs::set_permissions(&record, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let sleeper = dir.join("sleep.sh");
        // A child of its own that would outlive it if only the script were killed.
        let grandchild = dir.join("grandchild");
        std::fs::write(
            &sleeper,
            format!(
                "#!/bin/sh\nsleep 30 &\necho $! > {}\nwait\n",
                grandchild.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &sleeper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        // The signal mask a script starts with, as the program it execs sees it.
        let masker = dir.join("mask.sh");
        std::fs::write(
            &masker,
            format!(
                "#!/bin/sh\nexec grep SigBlk /proc/self/status > {}\n",
                dir.join("mask").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&masker, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let started = Instant::now();
        for (script, limit) in [
            (masker.to_str().unwrap(), 5000),
            ("/bin/true", 5000),
            ("/bin/false", 5000),
            (sleeper.to_str().unwrap(), 200),
            ("/nonexistent/script", 5000),
            (record.to_str().unwrap(), 5000),
        ] {
            runner.start(run(script, limit), Some(me())).unwrap();
        }
        assert!(runner.start(run("/bin/true", 10), None).is_err());
        let got = results(&mut runner, 6);
        assert!(started.elapsed() < Duration::from_secs(20));
        let ok_of = |s: &str| got.iter().find(|(p, _)| p == s).unwrap().1;
        assert!(ok_of("/bin/true"));
        assert!(!ok_of("/bin/false"));
        assert!(!ok_of(sleeper.to_str().unwrap()));
        assert!(!ok_of("/nonexistent/script"));
        assert!(ok_of(record.to_str().unwrap()));
        assert_eq!(
            std::fs::read_to_string(&args).unwrap(),
            "flag g 2 expelled\n"
        );
        assert_eq!(runner.outstanding(), 0);
        let mask = std::fs::read_to_string(dir.join("mask")).unwrap();
        assert!(mask.trim_end().ends_with(":\t0000000000000000"), "{mask}");
        let pid = std::fs::read_to_string(&grandchild).unwrap();
        let gone = (0..200).any(|_| {
            let state = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()));
            // Gone, or a zombie waiting for its (dead) parent's reaper.
            let done = state.map_or(true, |s| s.contains(") Z"));
            if !done {
                std::thread::sleep(Duration::from_millis(10));
            }
            done
        });
        assert!(gone, "the script's child outlived it");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn scripts_beyond_the_running_limit_wait_their_turn() {
        let mut runner = ScriptRunner::new(Waker::new().unwrap());
        for _ in 0..MAX_RUNNING + 4 {
            runner.start(run("/bin/true", 5000), Some(me())).unwrap();
        }
        assert_eq!(runner.outstanding(), MAX_RUNNING + 4);
        let got = results(&mut runner, MAX_RUNNING + 4);
        assert!(got.iter().all(|(_, ok)| *ok));
        assert_eq!(runner.outstanding(), 0);
    }
}
