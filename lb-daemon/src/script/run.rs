//! Running a script: as its user, in its own process group, with no input or output, killed
//! with its group when it outlives its timeout.
use std::{
    fmt, io,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::process::{CommandExt, ExitStatusExt},
    },
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use tokio::io::{unix::AsyncFd, Interest};

use super::ScriptUser;

/// How long a hook may run (the default of keepalived's `startup_script_timeout`). keepalived
/// gives `notify_stop` hooks 1 s (`system_call_script(.., TIMER_HZ, ..)` in `vrrp_notify.c`);
/// there the notifier's shutdown limit bounds them.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Between SIGTERM and SIGKILL for a script that outlived its timeout. keepalived.conf(5):
/// "scripts will be sent SIGTERM if ... it has run for too long"; it then sends SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// How a script run ended. Only `Exited(0)` is a success.
#[derive(Debug)]
pub enum RunOutcome {
    Exited(i32),
    Signaled(i32),
    /// Outlived its timeout and was killed.
    TimedOut,
    /// Could not be started (missing program, not executable, setuid refused...).
    SpawnFailed(io::Error),
    /// It ended but its status was lost (someone else reaped it).
    Lost(io::Error),
}

impl RunOutcome {
    pub fn success(&self) -> bool {
        matches!(self, RunOutcome::Exited(0))
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunOutcome::Exited(c) => write!(f, "exited with status {c}"),
            RunOutcome::Signaled(s) => write!(f, "killed by signal {s}"),
            RunOutcome::TimedOut => f.write_str("timed out"),
            RunOutcome::SpawnFailed(e) => write!(f, "could not be started: {e}"),
            RunOutcome::Lost(e) => write!(f, "exit status lost: {e}"),
        }
    }
}

/// Runs `argv` as `user` and waits at most `timeout` (then kills its process group). Never
/// blocks the runtime: the fork/exec happens on the blocking pool, the wait on a pidfd.
pub async fn run_command(argv: &[String], user: &ScriptUser, timeout: Duration) -> RunOutcome {
    match spawn(argv.to_vec(), user.clone()).await {
        Ok(running) => running.wait(timeout).await,
        Err(e) => RunOutcome::SpawnFailed(e),
    }
}

fn command(argv: &[String], user: &ScriptUser) -> io::Result<Command> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    // Output is not trusted and nobody reads it: /dev/null, so a chatty script never blocks
    // on a full pipe. Its own process group lets a timeout kill what it started too.
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/")
        .process_group(0);
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if user.uid() != euid || user.gid() != egid {
        cmd.uid(user.uid()).gid(user.gid());
    }
    Ok(cmd)
}

/// Starts `argv` as `user` on the blocking pool (fork and exec can take milliseconds).
pub(crate) async fn spawn(argv: Vec<String>, user: ScriptUser) -> io::Result<Running> {
    let child = tokio::task::spawn_blocking(move || {
        let mut cmd = command(&argv, &user)?;
        // ETXTBSY: the script is open for writing somewhere, typically for an instant while
        // a deployment tool rewrites it, or while another thread's fork still holds the
        // descriptor it was written through. A short retry rides that out.
        let mut tries = 0;
        loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    })
    .await
    .map_err(io::Error::other)??;
    Ok(Running::new(child))
}

/// Whether child `pid` has exited, leaving it reapable (`waitid(WNOWAIT)`); an error (no
/// such child any more) counts as exited.
fn exited_nowait(pid: libc::id_t) -> bool {
    // SAFETY: siginfo_t is plain old data; waitid writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: info is valid for writes; WNOWAIT leaves the child reapable.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after waitid returned.
    rc != 0 || unsafe { info.si_pid() } != 0
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor (close-on-exec)
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// A started script. The leader is reaped only after the last signal to its process group,
/// so its pid (the group id) cannot have been reused by then. Dropped before the end (a
/// cancelled task), it kills the group and reaps the leader on a plain thread.
pub(crate) struct Running {
    child: Option<Child>,
    /// Readable when the leader exits (Linux 5.3+); without it, `waitid(WNOWAIT)` polling.
    pidfd: Option<AsyncFd<OwnedFd>>,
}

impl Running {
    fn new(child: Child) -> Self {
        let pidfd = pidfd_open(child.id()).ok().and_then(|fd| {
            // SAFETY: the OwnedFd is a valid open descriptor, owned by the AsyncFd from here
            // on, and OwnedFd always returns that same descriptor.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
        });
        Running {
            child: Some(child),
            pidfd,
        }
    }

    fn signal_group(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: killpg has no memory preconditions. The group id is the unreaped
            // leader's pid, so it still names our group.
            unsafe { libc::killpg(child.id() as libc::pid_t, signal) };
        }
    }

    /// Whether the leader exited within `limit`, without reaping it.
    async fn exited_within(&self, limit: Duration) -> bool {
        let Some(child) = &self.child else {
            return true;
        };
        if let Some(fd) = &self.pidfd {
            match tokio::time::timeout(limit, fd.readable()).await {
                Ok(Ok(_)) => return true,
                Err(_) => return false,
                // The reactor is going away; fall back to polling.
                Ok(Err(_)) => {}
            }
        }
        let pid = child.id() as libc::id_t;
        let deadline = Instant::now() + limit;
        while !exited_nowait(pid) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    fn reap(&mut self) -> io::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("already reaped"));
        };
        match child.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => {
                self.child = Some(child);
                Err(io::Error::other("still running"))
            }
            Err(e) => Err(e),
        }
    }

    /// Waits for the script, killing its process group after `timeout`.
    pub(crate) async fn wait(mut self, timeout: Duration) -> RunOutcome {
        if self.exited_within(timeout).await {
            return match self.reap() {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => RunOutcome::Exited(code),
                    (None, Some(signal)) => RunOutcome::Signaled(signal),
                    (None, None) => RunOutcome::Lost(io::Error::other(format!("{status}"))),
                },
                Err(e) => RunOutcome::Lost(e),
            };
        }
        self.signal_group(libc::SIGTERM);
        self.exited_within(KILL_GRACE).await;
        // Also reaches whatever the script left behind in its group.
        self.signal_group(libc::SIGKILL);
        if self.exited_within(KILL_GRACE).await {
            let _ = self.reap();
        }
        // Otherwise (stuck in the kernel): Drop reaps it on a thread.
        RunOutcome::TimedOut
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in signal_group: the leader is unreaped, the group id is ours.
            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}
