//! Network-namespace test harness: namespaces, tracked child processes, packet captures and a
//! direct-routing lab (client, load balancer and real servers on one Linux bridge).
//!
//! Safety rules this module follows:
//! - nothing is configured in the root namespace: every link, address and sysctl lives in a
//!   namespace created here, and veth pairs are created directly inside those namespaces;
//! - addresses come only from the documentation ranges (192.0.2.0/24, 2001:db8::/32);
//! - every namespace name carries a per-process, per-call prefix ([`unique_prefix`]);
//! - teardown (on `Drop`, also while unwinding from a panic) signals only the PIDs spawned
//!   here and deletes only the namespaces created here;
//! - waits are conditions with deadlines ([`wait_until`]), never fixed sleeps.
//!
//! Typical use:
//!
//! ```no_run
//! use lb_tests::netns::{require_root, unique_prefix, DrLab, VIP_V4};
//! if !require_root("my_test") { return; }
//! let lab = DrLab::new(&unique_prefix("dr"), 3).unwrap();
//! lab.add_vip_to_lb().unwrap();
//! // attach the load balancer inside the LB namespace:
//! let ifindex = lab.lb_ifindex().unwrap();
//! lab.lb().run_in(|| { /* load + attach the XDP program on `ifindex` */ }).unwrap();
//! let bodies = lab.curl_batch(&VIP_V4.to_string(), 300).unwrap();
//! ```

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable that turns skips for missing privileges/tools into failures (CI).
pub const PRIVILEGED_ENV: &str = "LB_REQUIRE_PRIVILEGED";

/// Programs the [`DrLab`] drives.
pub const LAB_TOOLS: &[&str] = &["ip", "sysctl", "nginx", "curl", "tcpdump", "ethtool"];

// ---------------------------------------------------------------------------------------------
// Gates
// ---------------------------------------------------------------------------------------------

/// Prints `SKIP <test>: <reason>` and returns false, or panics under
/// `LB_REQUIRE_PRIVILEGED=1`.
pub fn skip_or_panic(test: &str, reason: &str) -> bool {
    if std::env::var(PRIVILEGED_ENV).as_deref() == Ok("1") {
        panic!("{test}: {reason}, and {PRIVILEGED_ENV}=1 forbids skipping");
    }
    eprintln!("SKIP {test}: {reason}; set {PRIVILEGED_ENV}=1 to make this a failure");
    false
}

/// True when running as root (euid 0). Otherwise prints `SKIP <test>: needs root (...)` and
/// returns false, or panics if `LB_REQUIRE_PRIVILEGED=1`.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    skip_or_panic(test, &format!("needs root (euid is {euid})"))
}

/// True when every program in `tools` is found (PATH, /usr/sbin, /sbin). Otherwise prints a
/// `SKIP` line naming the missing ones and returns false, or panics if `LB_REQUIRE_PRIVILEGED=1`.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_program(t).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    skip_or_panic(
        test,
        &format!(
            "needs {} (apt-get install iproute2 procps nginx-light curl tcpdump ethtool)",
            missing.join(", ")
        ),
    )
}

/// [`require_root`] and [`require_tools`] with [`LAB_TOOLS`]: what a [`DrLab`] test needs.
pub fn require_lab(test: &str) -> bool {
    require_root(test) && require_tools(test, LAB_TOOLS)
}

/// Absolute path of `name` from PATH, falling back to the sbin directories (which a non-login
/// root shell or `cargo test` may not have on PATH).
fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn program(name: &str) -> OsString {
    find_program(name)
        .map(PathBuf::into_os_string)
        .unwrap_or_else(|| name.into())
}

// ---------------------------------------------------------------------------------------------
// Names and waiting
// ---------------------------------------------------------------------------------------------

/// A prefix for namespace names that is unique per process and per call:
/// `{tag}{pid:x}-{n}-`, with `tag` reduced to at most 4 ASCII alphanumerics, e.g. `dr1f3a-0-`
/// (at most 14 characters). Counters whose prefix is already used by a namespace in
/// `/run/netns` (a leftover of an earlier run with the same pid) are skipped.
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(4)
        .collect();
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{tag}{pid:x}-{n}-");
        let taken = fs::read_dir("/run/netns")
            .map(|dir| {
                dir.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .unwrap_or(false);
        if !taken {
            return prefix;
        }
    }
}

/// Polls `f` (every 2 ms at first, backing off to 50 ms) until it returns true or `timeout`
/// passes; the error names `what`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        if f() {
            return Ok(());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------------------------

fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            let _ = write!(s, " '{}'", a.replace('\'', r"'\''"));
        } else {
            let _ = write!(s, " {a}");
        }
    }
    s
}

/// Runs `cmd` to completion; returns stdout, or an error with the command line, the exit
/// status, stderr and stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let line = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "`{line}` failed ({}): {}{}",
            out.status,
            stderr.trim(),
            if stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim())
            }
        );
    }
    Ok(stdout)
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next().ok_or_else(|| anyhow!("bad MAC {s:?}"))?;
        *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {s:?}"))?;
    }
    if parts.next().is_some() {
        bail!("bad MAC {s:?}");
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`, the way tcpdump `-e` and iproute2 print it.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// MAC address of `ifname` inside the namespace called `ns`.
pub fn mac_of(ns: &str, ifname: &str) -> Result<[u8; 6]> {
    let out =
        run(Command::new(program("ip")).args(["-n", ns, "-o", "link", "show", "dev", ifname]))?;
    let addr = out
        .split_whitespace()
        .skip_while(|w| !w.starts_with("link/"))
        .nth(1)
        .ok_or_else(|| anyhow!("no link-layer address for {ifname} in {ns}: {out}"))?;
    parse_mac(addr)
}

/// Interface index of `ifname` inside the namespace called `ns`.
pub fn ifindex_of(ns: &str, ifname: &str) -> Result<u32> {
    let out =
        run(Command::new(program("ip")).args(["-n", ns, "-o", "link", "show", "dev", ifname]))?;
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| anyhow!("cannot parse ifindex of {ifname} in {ns}: {out}"))
}

// ---------------------------------------------------------------------------------------------
// Tracked processes
// ---------------------------------------------------------------------------------------------

struct ProcInner {
    pid: u32,
    cmdline: String,
    child: Mutex<Child>,
    stdout: Option<PathBuf>,
    stderr: Option<PathBuf>,
}

/// A process started by [`Netns::spawn`] / [`Netns::spawn_command`]. Cloning gives another
/// handle to the same process. The owning [`Netns`] keeps a handle too and stops the process
/// when it is dropped; dropping a `Proc` does not stop it.
///
/// Signals are sent only while the child has not been reaped, so a recycled PID is never hit.
#[derive(Clone)]
pub struct Proc(Arc<ProcInner>);

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proc({} `{}`)", self.0.pid, self.0.cmdline)
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    pub fn cmdline(&self) -> &str {
        &self.0.cmdline
    }

    /// Exit status if it has exited (reaps it), `None` while it runs.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut child = self.0.child.lock().unwrap_or_else(|e| e.into_inner());
        Ok(child.try_wait()?)
    }

    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `sig` (e.g. `libc::SIGINT`) unless the process has already exited.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let mut child = self.0.child.lock().unwrap_or_else(|e| e.into_inner());
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        // The child is not reaped (we hold the lock and it is ours), so the pid is still it.
        // SAFETY: plain kill(2) on our own unreaped child.
        if unsafe { libc::kill(self.0.pid as libc::pid_t, sig) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err).with_context(|| format!("kill({}, {sig})", self.0.pid));
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let mut status = None;
        let _ = wait_until(&format!("`{}` to exit", self.0.cmdline), timeout, || {
            status = self.try_wait().ok().flatten();
            status.is_some()
        });
        Ok(status)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM)?;
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        self.kill()
    }

    /// SIGKILL and wait.
    pub fn kill(&self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL)?;
        let mut child = self.0.child.lock().unwrap_or_else(|e| e.into_inner());
        Ok(child.wait()?)
    }

    /// File holding stdout (processes started with [`Netns::spawn`]).
    pub fn stdout_path(&self) -> Option<&Path> {
        self.0.stdout.as_deref()
    }

    /// File holding stderr (processes started with [`Netns::spawn`]).
    pub fn stderr_path(&self) -> Option<&Path> {
        self.0.stderr.as_deref()
    }

    /// Stdout written so far (empty when not captured to a file).
    pub fn read_stdout(&self) -> String {
        self.stdout_path()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Stderr written so far (empty when not captured to a file).
    pub fn read_stderr(&self) -> String {
        self.stderr_path()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

/// Stops every process: SIGTERM to all, wait up to `grace` for all, SIGKILL the rest.
fn stop_all(procs: &[Proc], grace: Duration) {
    for p in procs {
        if let Err(e) = p.signal(libc::SIGTERM) {
            eprintln!("netns: {e:#}");
        }
    }
    let _ = wait_until("children to exit", grace, || {
        procs.iter().all(|p| !p.is_running())
    });
    for p in procs {
        if p.is_running() {
            eprintln!("netns: `{}` ignored SIGTERM, killing it", p.cmdline());
        }
        if let Err(e) = p.kill() {
            eprintln!("netns: {e:#}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A bpf filesystem for pins
// ---------------------------------------------------------------------------------------------

/// A bpf filesystem that outlives the processes that pin on it, without a mount in the
/// host's namespace: mounted in a mount namespace of its own (a slave of the host's, so the
/// network namespaces added later are seen in it), which a `sleep` holds until drop. A
/// daemon started in it through `ip netns exec` gets a copy of its mounts, as a daemon
/// started by systemd sees the host's /sys/fs/bpf; its pins (maps, links) live on after it
/// is killed, for the next run to take over.
pub struct PinFs {
    holder: Child,
    dir: PathBuf,
}

impl PinFs {
    /// Mounts it at `dir` (created), in the holder's namespace only.
    pub fn new(dir: &Path) -> Result<PinFs> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let script = format!(
            "mount -t bpf bpf '{}' && echo ready && exec sleep 86400",
            dir.display()
        );
        let mut holder = Command::new(program("unshare"))
            .args(["--mount", "--propagation", "slave", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the bpf filesystem's holder (unshare)")?;
        let stdout = holder.stdout.take().context("holder stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            bail!("mounting a bpf filesystem at {} failed", dir.display());
        }
        Ok(PinFs {
            holder,
            dir: dir.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether anything is pinned under `sub` (seen from the holder's namespace).
    pub fn list(&self, sub: &str) -> Result<String> {
        run(Command::new(program("nsenter"))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.pid()))
            .args(["--", "find"])
            .arg(self.dir.join(sub)))
    }
}

impl Drop for PinFs {
    fn drop(&mut self) {
        // The namespace, its mount and every pin in it go with the holder.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = fs::remove_dir(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Netns
// ---------------------------------------------------------------------------------------------

/// A network namespace created (and, on drop, deleted) by this process.
pub struct Netns {
    name: String,
    dir: PathBuf,
    procs: Mutex<Vec<Proc>>,
    seq: AtomicU32,
    /// Commands run from the mount namespace of this process (a [`PinFs`] holder).
    mounts_of: Mutex<Option<u32>>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.name)
    }
}

impl Netns {
    /// `ip netns add NAME`, then `lo` up. Fails if the namespace exists already (it is not
    /// ours then, and is left alone). A per-namespace scratch directory is created under the
    /// temp dir and removed on drop.
    pub fn new(name: &str) -> Result<Netns> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("bad namespace name {name:?}");
        }
        run(Command::new(program("ip")).args(["netns", "add", name]))?;
        // From here on, drop deletes it.
        let ns = Netns {
            name: name.to_string(),
            dir: std::env::temp_dir().join(format!("lbtest-{name}")),
            procs: Mutex::new(Vec::new()),
            seq: AtomicU32::new(0),
            mounts_of: Mutex::new(None),
        };
        fs::create_dir_all(&ns.dir)
            .with_context(|| format!("cannot create {}", ns.dir.display()))?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Scratch directory for this namespace (config files, logs); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A `Command` for `ip netns exec NAME args...` (not run, not tracked). The program in
    /// `args[0]` is resolved to an absolute path.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let holder = *self.mounts_of.lock().unwrap_or_else(|e| e.into_inner());
        let mut cmd = match holder {
            // `ip netns exec` copies the mounts of the namespace it starts in: those of the
            // holder, with its bpf filesystem.
            Some(pid) => {
                let mut c = Command::new(program("nsenter"));
                c.arg(format!("--mount=/proc/{pid}/ns/mnt"))
                    .arg("--")
                    .arg(program("ip"));
                c
            }
            None => Command::new(program("ip")),
        };
        cmd.args(["netns", "exec", &self.name]);
        if let Some((first, rest)) = args.split_first() {
            match first.as_ref().to_str() {
                Some(p) => cmd.arg(program(p)),
                None => cmd.arg(first),
            };
            cmd.args(rest);
        }
        cmd
    }

    /// Runs `args` inside the namespace and returns its stdout; the error carries the command
    /// line, exit status and stderr.
    pub fn exec<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        run(&mut self.command(args))
    }

    /// Runs every later command of this namespace from the mount namespace `fs` holds, so
    /// that what they pin on its bpf filesystem outlives them.
    pub fn use_pin_fs(&self, fs: &PinFs) {
        *self.mounts_of.lock().unwrap_or_else(|e| e.into_inner()) = Some(fs.pid());
    }

    /// `ip -n NAME args...` (cheaper than `exec(["ip", ...])`).
    pub fn ip<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<String> {
        run(Command::new(program("ip"))
            .args(["-n", &self.name])
            .args(args))
    }

    /// Sets one sysctl inside the namespace (`sysctl -q -w key=value`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.sysctls(&[(key, value)])
    }

    /// Sets several sysctls with one process.
    pub fn sysctls(&self, kvs: &[(&str, &str)]) -> Result<()> {
        let mut args: Vec<String> = vec!["sysctl".into(), "-q".into(), "-w".into()];
        args.extend(kvs.iter().map(|(k, v)| format!("{k}={v}")));
        self.exec(&args).map(drop)
    }

    /// Starts `args` inside the namespace with stdin from /dev/null and stdout/stderr written
    /// to files in [`Netns::dir`] (see [`Proc::read_stdout`]). The process is stopped when the
    /// namespace is dropped. `ip netns exec` execs the program, so the PID is the program's.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Proc> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let base: String = args
            .first()
            .map(|a| {
                Path::new(a.as_ref())
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let out = self.dir.join(format!("{n}-{base}.out"));
        let err = self.dir.join(format!("{n}-{base}.err"));
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out).with_context(|| format!("create {}", out.display()))?)
            .stderr(File::create(&err).with_context(|| format!("create {}", err.display()))?);
        self.track(cmd, Some(out), Some(err))
    }

    /// Starts a command built with [`Netns::command`] (the caller chooses its stdio) and
    /// tracks it like [`Netns::spawn`].
    pub fn spawn_command(&self, cmd: Command) -> Result<Proc> {
        self.track(cmd, None, None)
    }

    fn track(
        &self,
        mut cmd: Command,
        stdout: Option<PathBuf>,
        stderr: Option<PathBuf>,
    ) -> Result<Proc> {
        let cmdline = command_line(&cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn `{cmdline}`"))?;
        let proc = Proc(Arc::new(ProcInner {
            pid: child.id(),
            cmdline,
            child: Mutex::new(child),
            stdout,
            stderr,
        }));
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(proc.clone());
        Ok(proc)
    }

    /// Stops every process spawned in this namespace that is still running (SIGTERM, up to
    /// `grace`, then SIGKILL). Called by drop with a 2 s grace.
    pub fn stop_children(&self, grace: Duration) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        stop_all(&procs, grace);
    }

    /// Runs `f` on a fresh thread whose network namespace is this one (setns(CLONE_NEWNET) on
    /// `/run/netns/NAME`), and returns its result; a panic in `f` is propagated. Sockets,
    /// netlink requests and BPF attachments made by `f` use this namespace; sockets and file
    /// descriptors keep it when returned. Mount-dependent paths (`/sys/class/net`) still show
    /// the root namespace's view.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || -> Result<T> {
                // SAFETY: setns on a valid namespace fd; affects only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns({}, CLONE_NEWNET)", path.display()));
                }
                drop(file);
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        mac_of(&self.name, ifname)
    }

    /// Interface index of `ifname` in this namespace.
    pub fn ifindex(&self, ifname: &str) -> Result<u32> {
        ifindex_of(&self.name, ifname)
    }

    /// The link-layer address the neighbour table holds for `ip` (None when there is no
    /// entry or it is INCOMPLETE/FAILED).
    pub fn neigh_mac(&self, ip: &str) -> Result<Option<[u8; 6]>> {
        let want: IpAddr = ip
            .trim_matches(|c| c == '[' || c == ']')
            .parse()
            .with_context(|| format!("bad address {ip:?}"))?;
        let out = self.ip(&["neigh", "show", "to", &want.to_string()])?;
        for line in out.lines() {
            let mut words = line.split_whitespace();
            if words.next().and_then(|w| w.parse::<IpAddr>().ok()) != Some(want) {
                continue;
            }
            if let Some(mac) = words.skip_while(|w| *w != "lladdr").nth(1) {
                return parse_mac(mac).map(Some);
            }
        }
        Ok(None)
    }

    /// True when `ifname` is administratively up and has carrier (LOWER_UP).
    pub fn link_is_up(&self, ifname: &str) -> bool {
        let Ok(out) = self.ip(&["-o", "link", "show", "dev", ifname]) else {
            return false;
        };
        let flags = out
            .split_once('<')
            .and_then(|(_, rest)| rest.split_once('>'))
            .map(|(flags, _)| flags)
            .unwrap_or("");
        let mut flags = flags.split(',');
        flags.clone().any(|f| f == "UP") && flags.any(|f| f == "LOWER_UP")
    }

    /// Starts `tcpdump -l -n -e --immediate-mode -i IFNAME FILTER` here and returns once it
    /// is capturing (it printed "listening on"). An empty filter captures everything.
    pub fn capture(&self, ifname: &str, filter: &str) -> Result<Capture> {
        self.capture_dir(ifname, None, filter)
    }

    /// [`Netns::capture`] of the frames this namespace sends on `ifname` only (`-Q out`).
    pub fn capture_sent(&self, ifname: &str, filter: &str) -> Result<Capture> {
        self.capture_dir(ifname, Some("out"), filter)
    }

    fn capture_dir(&self, ifname: &str, dir: Option<&str>, filter: &str) -> Result<Capture> {
        let mut args = vec![
            "tcpdump",
            "-l",
            "-n",
            "-e",
            "--immediate-mode",
            "-i",
            ifname,
        ];
        if let Some(d) = dir {
            args.extend(["-Q", d]);
        }
        if !filter.trim().is_empty() {
            args.push(filter);
        }
        let mut cmd = self.command(&args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cmdline = command_line(&cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot spawn `{cmdline}`"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let proc = Proc(Arc::new(ProcInner {
            pid: child.id(),
            cmdline,
            child: Mutex::new(child),
            stdout: None,
            stderr: None,
        }));
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(proc.clone());
        let lines = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(String::new()));
        let out_thread = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.trim().is_empty() {
                        continue;
                    }
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })
        };
        let err_thread = {
            let errors = errors.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut stderr = stderr;
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let capture = Capture {
            proc,
            what: format!("tcpdump on {ifname} in {}", self.name),
            lines,
            errors,
            threads: vec![out_thread, err_thread],
        };
        let mut exited = false;
        let ready = wait_until(
            &format!("{} to print \"listening on\"", capture.what),
            Duration::from_secs(10),
            || {
                exited = !capture.proc.is_running();
                exited || capture.stderr().contains("listening on")
            },
        );
        if let Err(e) = ready {
            bail!("{e}; stderr: {}", capture.stderr().trim());
        }
        if exited && !capture.stderr().contains("listening on") {
            bail!("{} exited: {}", capture.what, capture.stderr().trim());
        }
        Ok(capture)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop_children(Duration::from_secs(2));
        if let Err(e) = run(Command::new(program("ip")).args(["netns", "del", &self.name])) {
            eprintln!("netns: {e:#}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Packet capture
// ---------------------------------------------------------------------------------------------

/// A running `tcpdump -l -n -e` (see [`Netns::capture`]). Its stdout lines are collected as
/// they arrive; [`Capture::stop`] ends it and returns them. If neither `stop` is called nor
/// the capture is dropped, the namespace's drop stops it.
pub struct Capture {
    proc: Proc,
    what: String,
    lines: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<String>>,
    threads: Vec<JoinHandle<()>>,
}

impl Capture {
    /// Lines captured so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// tcpdump's stderr so far ("listening on ...", and at the end the packet counts).
    pub fn stderr(&self) -> String {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `pred` holds for the lines captured so far; returns them.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[String]) -> bool,
    ) -> Result<Vec<String>> {
        wait_until(what, timeout, || {
            pred(&self.lines.lock().unwrap_or_else(|e| e.into_inner()))
        })
        .with_context(|| {
            format!(
                "{}; captured so far:\n{}",
                self.what,
                self.lines().join("\n")
            )
        })?;
        Ok(self.lines())
    }

    /// Stops tcpdump (SIGINT, so it flushes; SIGKILL after 5 s) and returns every line.
    /// Prints a warning when tcpdump reports packets dropped by the kernel.
    pub fn stop(mut self) -> Result<Vec<String>> {
        self.finish()?;
        let stderr = self.stderr();
        if let Some(line) = stderr.lines().find(|l| l.contains("dropped by kernel")) {
            if !line.trim_start().starts_with('0') {
                eprintln!("netns: {}: {line}", self.what);
            }
        }
        Ok(self.lines())
    }

    fn finish(&mut self) -> Result<()> {
        self.proc.signal(libc::SIGINT)?;
        if self.proc.wait_timeout(Duration::from_secs(5))?.is_none() {
            self.proc.kill()?;
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.finish();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Direct-routing lab
// ---------------------------------------------------------------------------------------------

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
pub const PREFIX_LEN_V4: u8 = 24;
pub const PREFIX_LEN_V6: u8 = 64;
/// Port nginx listens on in the real servers.
pub const HTTP_PORT: u16 = 80;
/// Most real servers a [`DrLab`] supports (192.0.2.11 ..= 192.0.2.99).
pub const MAX_SERVERS: usize = 89;

/// Real server `i` (1-based): 192.0.2.(10+i).
pub fn server_v4(i: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_SERVERS).contains(&i),
        "server index {i} out of 1..={MAX_SERVERS}"
    );
    Ipv4Addr::new(192, 0, 2, 10 + i as u8)
}

/// Real server `i` (1-based): 2001:db8::(10+i), the decimal digits read as hex so that rs1 is
/// 2001:db8::11 like 192.0.2.11.
pub fn server_v6(i: usize) -> Ipv6Addr {
    assert!(
        (1..=MAX_SERVERS).contains(&i),
        "server index {i} out of 1..={MAX_SERVERS}"
    );
    let last = u16::from_str_radix(&(10 + i).to_string(), 16).expect("decimal digits are hex");
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
}

/// MAC given to a host's eth0: 02:db:00:00:00:XX with XX the last address octet's decimal
/// digits (client :01, LB :02, rs1 :11, ...), so tcpdump output is easy to read.
fn host_mac(last_octet: u8) -> String {
    format!("02:db:00:00:00:{last_octet:02}")
}

/// Name of the bridge inside the bridge namespace.
pub const BRIDGE: &str = "br0";
/// Name of every host's interface to the bridge.
pub const HOST_IF: &str = "eth0";

/// One reply of [`DrLab::curl_batch_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurlReply {
    /// HTTP status, 0 when the transfer failed.
    pub status: u16,
    /// Response body with the trailing newline removed.
    pub body: String,
    /// Client-side TCP port (a new one per request: every request is a new flow).
    pub local_port: u16,
    /// curl's error message for a failed transfer, empty otherwise.
    pub error: String,
}

/// A LAN: a Linux bridge in a namespace of its own, and hosts (namespaces) each joined to it
/// by a veth pair whose host end is `eth0`. Topologies (the DR lab, the VRRP pairs) are built
/// from it.
#[derive(Debug)]
pub struct Lan {
    prefix: String,
    bridge: Netns,
}

impl Lan {
    pub fn new(prefix: &str) -> Result<Lan> {
        let bridge = Netns::new(&format!("{prefix}br"))?;
        // The bridge namespace carries no addresses: no IPv6 on its links, so the ports send
        // no router solicitations, MLD reports or DAD probes into the captures.
        bridge.sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ])?;
        bridge.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        bridge.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(Lan {
            prefix: prefix.to_string(),
            bridge,
        })
    }

    pub fn bridge(&self) -> &Netns {
        &self.bridge
    }

    pub fn into_bridge(self) -> Netns {
        self.bridge
    }

    /// A host `{prefix}{suffix}`: namespace, sysctls, veth pair to the bridge (bridge port
    /// `to-{suffix}`, MAC `02:db:00:00:00:{last}`), the given addresses on `eth0`, up.
    pub fn host(&self, suffix: &str, last: u8, v4: Ipv4Addr, v6: Ipv6Addr) -> Result<Netns> {
        let ns = Netns::new(&format!("{}{suffix}", self.prefix))?;
        // No DAD: addresses are usable at once (nodad below covers the global ones; this
        // covers the link-local one), and no router advertisements are expected.
        ns.sysctls(&[
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.accept_ra", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
        ])?;
        self.join(&ns, suffix, HOST_IF, last, v4, v6)?;
        Ok(ns)
    }

    /// Joins the existing host `ns` to this LAN: a veth pair (bridge port `to-{suffix}`, the
    /// host's end `ifname` with MAC `02:db:00:00:00:{last}`), the given addresses on it, up.
    pub fn join(
        &self,
        ns: &Netns,
        suffix: &str,
        ifname: &str,
        last: u8,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
    ) -> Result<()> {
        let bridge = &self.bridge;
        let port = format!("to-{suffix}");
        bridge.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            ifname,
            "address",
            &host_mac(last),
            "netns",
            ns.name(),
        ])?;
        bridge.ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{v4}/{PREFIX_LEN_V4}"),
            "dev",
            ifname,
        ])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{v6}/{PREFIX_LEN_V6}"),
            "dev",
            ifname,
            "nodad",
        ])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        Ok(())
    }
}

/// Direct-routing topology:
///
/// ```text
///  {p}c  eth0 192.0.2.1  2001:db8::1  ──┐
///  {p}lb eth0 192.0.2.2  2001:db8::2  ──┤ {p}br: br0 with ports to-c, to-lb, to-rs1..
///  {p}rsI eth0 192.0.2.(10+I) 2001:db8::(10+I), lo: VIPs, nginx :80 ──┘
/// ```
///
/// Real servers carry the VIPs (192.0.2.100/32, 2001:db8::100/128) on `lo` with
/// `arp_ignore=1`, `arp_announce=2`, and run nginx answering `rsI\n`. The LB gets the VIPs
/// only from [`DrLab::add_vip_to_lb`]. Drop stops every process, then deletes the namespaces.
pub struct DrLab {
    prefix: String,
    // Field order is drop order: hosts first, the bridge last.
    servers: Vec<Netns>,
    client: Netns,
    lb: Netns,
    bridge: Netns,
    nginx: Vec<Proc>,
}

impl std::fmt::Debug for DrLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DrLab({}, {} servers)", self.prefix, self.servers.len())
    }
}

/// nginx.conf for one real server, everything under `dir`.
fn nginx_conf(dir: &Path, body: &str) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {HTTP_PORT} default_server;
        listen [::]:{HTTP_PORT} default_server ipv6only=on;
        location / {{
            default_type text/plain;
            return 200 "{body}\n";
        }}
    }}
}}
"#
    )
}

fn url_for(host: &str) -> String {
    if host.starts_with("http://") || host.starts_with("https://") {
        host.to_string()
    } else if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]/")
    } else {
        format!("http://{host}/")
    }
}

impl DrLab {
    /// Builds the lab (namespaces `{prefix}br`, `{prefix}c`, `{prefix}lb`, `{prefix}rs1..N`)
    /// and returns once every link is up and every nginx answers on v4 and v6. On error,
    /// whatever was created is torn down.
    pub fn new(prefix: &str, n_servers: usize) -> Result<DrLab> {
        if n_servers > MAX_SERVERS {
            bail!("at most {MAX_SERVERS} real servers, not {n_servers}");
        }
        let lan = Lan::new(prefix)?;
        let host =
            |suffix: &str, last: u8, v4: Ipv4Addr, v6: Ipv6Addr| lan.host(suffix, last, v4, v6);

        let client = host("c", 1, CLIENT_V4, CLIENT_V6)?;
        let lb = host("lb", 2, LB_V4, LB_V6)?;
        let mut servers = Vec::with_capacity(n_servers);
        let mut nginx = Vec::with_capacity(n_servers);
        for i in 1..=n_servers {
            let name = format!("rs{i}");
            let ns = host(&name, 10 + i as u8, server_v4(i), server_v6(i))?;
            ns.sysctls(&[
                ("net.ipv4.conf.all.arp_ignore", "1"),
                ("net.ipv4.conf.all.arp_announce", "2"),
                ("net.ipv4.conf.lo.arp_ignore", "1"),
                ("net.ipv4.conf.lo.arp_announce", "2"),
            ])?;
            ns.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{VIP_V6}/128"),
                "dev",
                "lo",
                "nodad",
            ])?;
            let proc = spawn_nginx(&ns, &name)?;
            servers.push(ns);
            nginx.push(proc);
        }
        let lab = DrLab {
            prefix: prefix.to_string(),
            servers,
            client,
            lb,
            bridge: lan.into_bridge(),
            nginx,
        };
        lab.wait_ready(Duration::from_secs(10))?;
        Ok(lab)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        for ns in self.hosts() {
            wait_until(&format!("{HOST_IF} up in {}", ns.name()), left(), || {
                ns.link_is_up(HOST_IF)
            })?;
        }
        for (i, (ns, proc)) in self.servers.iter().zip(&self.nginx).enumerate() {
            let i = i + 1;
            for host in [server_v4(i).to_string(), server_v6(i).to_string()] {
                let url = url_for(&host);
                let want = format!("rs{i}\n");
                let mut exited = false;
                let r = wait_until(
                    &format!("nginx in {} to answer {url}", ns.name()),
                    left(),
                    || {
                        exited = !proc.is_running();
                        exited
                            || ns
                                .exec(&["curl", "-s", "-g", "--max-time", "1", &url])
                                .is_ok_and(|body| body == want)
                    },
                );
                if exited {
                    bail!(
                        "nginx in {} exited: {}{}",
                        ns.name(),
                        proc.read_stderr().trim(),
                        fs::read_to_string(ns.dir().join("error.log")).unwrap_or_default()
                    );
                }
                r.with_context(|| {
                    format!(
                        "nginx error.log: {}",
                        fs::read_to_string(ns.dir().join("error.log")).unwrap_or_default()
                    )
                })?;
            }
        }
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn bridge(&self) -> &Netns {
        &self.bridge
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn lb(&self) -> &Netns {
        &self.lb
    }

    /// Real server `i`, 1-based like its name (`rs1` is `server(1)`).
    pub fn server(&self, i: usize) -> &Netns {
        &self.servers[i - 1]
    }

    pub fn servers(&self) -> &[Netns] {
        &self.servers
    }

    /// The nginx process of real server `i` (1-based), e.g. to stop it in a health-check test.
    pub fn nginx(&self, i: usize) -> &Proc {
        &self.nginx[i - 1]
    }

    /// nginx's access log of real server `i` (1-based): one line per request served, with the
    /// client's address, e.g. to count which server a load balancer picked.
    pub fn access_log(&self, i: usize) -> PathBuf {
        self.server(i).dir().join("access.log")
    }

    /// Client, LB, then the real servers.
    pub fn hosts(&self) -> impl Iterator<Item = &Netns> {
        [&self.client, &self.lb].into_iter().chain(&self.servers)
    }

    /// Every namespace of the lab, the bridge's last.
    pub fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        self.hosts().chain([&self.bridge])
    }

    /// MAC of `ifname` in the namespace called `ns`.
    pub fn mac_of(&self, ns: &str, ifname: &str) -> Result<[u8; 6]> {
        mac_of(ns, ifname)
    }

    pub fn client_mac(&self) -> Result<[u8; 6]> {
        self.client.mac(HOST_IF)
    }

    pub fn lb_mac(&self) -> Result<[u8; 6]> {
        self.lb.mac(HOST_IF)
    }

    /// eth0's ifindex inside the LB namespace (where the XDP program attaches).
    pub fn lb_ifindex(&self) -> Result<u32> {
        self.lb.ifindex(HOST_IF)
    }

    /// eth0 MACs of rs1..rsN, in order.
    pub fn server_macs(&self) -> Result<Vec<[u8; 6]>> {
        self.servers.iter().map(|s| s.mac(HOST_IF)).collect()
    }

    /// Puts the VIPs on the LB's eth0 (192.0.2.100/32, 2001:db8::100/128 nodad) so it answers
    /// ARP and neighbour solicitations for them, as VRRP would.
    pub fn add_vip_to_lb(&self) -> Result<()> {
        add_vips(&self.lb)
    }

    /// Removes what [`DrLab::add_vip_to_lb`] added.
    pub fn remove_vip_from_lb(&self) -> Result<()> {
        self.lb
            .ip(&["addr", "del", &format!("{VIP_V4}/32"), "dev", HOST_IF])?;
        self.lb
            .ip(&["addr", "del", &format!("{VIP_V6}/128"), "dev", HOST_IF])?;
        Ok(())
    }

    /// `ethtool -K eth0 tx off` on every host (client, LB, real servers): needed for native
    /// XDP on veth, where a frame that went through XDP loses its "checksum to be filled in"
    /// state.
    pub fn set_tx_offload_off(&self) -> Result<()> {
        for ns in self.hosts() {
            ns.exec(&["ethtool", "-K", HOST_IF, "tx", "off"])?;
        }
        Ok(())
    }

    /// (bridge namespace name, port name) of the bridge-side peer of the LB's veth. Native
    /// XDP_TX on the LB's eth0 needs an XDP program (a trivial XDP_PASS) on this port:
    /// attach it inside `lab.bridge().run_in(..)` with `lab.lb_peer_ifindex()`.
    pub fn lb_peer_port(&self) -> (String, String) {
        (self.bridge.name().to_string(), "to-lb".to_string())
    }

    /// ifindex of [`DrLab::lb_peer_port`] inside the bridge namespace.
    pub fn lb_peer_ifindex(&self) -> Result<u32> {
        self.bridge.ifindex("to-lb")
    }

    /// Bridge-side port of a host: `"c"`, `"lb"`, `"rs1"`... gives `to-c`, `to-lb`, `to-rs1`.
    /// Setting it down (`lab.bridge().ip(&["link","set",&port,"down"])`) cuts that host off.
    pub fn bridge_port(&self, host: &str) -> String {
        format!("to-{host}")
    }

    /// `n` requests from the client, one curl process per request (`curl -sS -g --max-time 2
    /// URL`), each a new TCP connection. `host` is an address (`192.0.2.100`,
    /// `2001:db8::100`, `[2001:db8::100]`) or a full URL. Returns the bodies without the
    /// trailing newline; fails on the first failed request.
    pub fn curl(&self, host: &str, n: usize) -> Result<Vec<String>> {
        let url = url_for(host);
        (0..n)
            .map(|_| {
                self.client
                    .exec(&["curl", "-sS", "-g", "--max-time", "2", &url])
                    .map(|b| b.trim_end_matches('\n').to_string())
            })
            .collect()
    }

    /// Like [`DrLab::curl`] but with one curl process for all `n` requests (much faster); each
    /// request still uses a new TCP connection (`Connection: close`), so each is a new flow.
    /// Fails if any request failed or was not a 200.
    pub fn curl_batch(&self, host: &str, n: usize) -> Result<Vec<String>> {
        curl_batch_from(&self.client, host, n)
    }

    /// One curl process for `n` requests to `host` (see [`curl_batch_raw_from`]).
    pub fn curl_batch_raw(
        &self,
        host: &str,
        n: usize,
        max_time: Duration,
    ) -> Result<Vec<CurlReply>> {
        curl_batch_raw_from(&self.client, host, n, max_time)
    }

    /// Starts tcpdump on `ifname` in `ns` (see [`Netns::capture`]).
    pub fn capture(&self, ns: &Netns, ifname: &str, filter: &str) -> Result<Capture> {
        ns.capture(ifname, filter)
    }

    /// Stops every process in every namespace of the lab.
    fn stop_everything(&self) {
        let procs: Vec<Proc> = self
            .namespaces()
            .flat_map(|ns| std::mem::take(&mut *ns.procs.lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        stop_all(&procs, Duration::from_secs(2));
    }
}

/// Like [`DrLab::curl`] but with one curl process for all `n` requests (much faster); each
/// request still uses a new TCP connection (`Connection: close`), so each is a new flow.
/// Fails if any request failed or was not a 200.
pub fn curl_batch_from(client: &Netns, host: &str, n: usize) -> Result<Vec<String>> {
    let replies = curl_batch_raw_from(client, host, n, Duration::from_secs(2))?;
    let bad: Vec<&CurlReply> = replies.iter().filter(|r| r.status != 200).collect();
    if let Some(first) = bad.first() {
        bail!(
            "{} of {n} requests to {} failed; first: status {} {}",
            bad.len(),
            url_for(host),
            first.status,
            first.error
        );
    }
    Ok(replies.into_iter().map(|r| r.body).collect())
}

/// One curl process for `n` requests to `host`, each on a new TCP connection, each with
/// its own `max_time`; failed requests are reported in the result (status 0), not as an
/// error.
pub fn curl_batch_raw_from(
    client: &Netns,
    host: &str,
    n: usize,
    max_time: Duration,
) -> Result<Vec<CurlReply>> {
    const MARK: &str = "\n\x1e@@curl ";
    if n == 0 {
        return Ok(Vec::new());
    }
    let url = url_for(host);
    let max_time = format!("{:.3}", max_time.as_secs_f64());
    let write_out = format!("{MARK}%{{http_code}} %{{local_port}} %{{errormsg}}\n");
    let mut args: Vec<&str> = vec![
        "curl",
        "-s",
        "-g",
        "--max-time",
        &max_time,
        "-H",
        "Connection: close",
        "-w",
        &write_out,
    ];
    args.extend(std::iter::repeat_n(url.as_str(), n));
    let mut cmd = client.command(&args);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", command_line(&cmd)))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut replies = Vec::with_capacity(n);
    let mut rest: &str = &stdout;
    while let Some(pos) = rest.find(MARK) {
        let body = rest[..pos].trim_end_matches('\n').to_string();
        let after = &rest[pos + MARK.len()..];
        let (meta, tail) = after.split_once('\n').unwrap_or((after, ""));
        let mut words = meta.splitn(3, ' ');
        let status = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let local_port = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        let error = words.next().unwrap_or("").trim().to_string();
        replies.push(CurlReply {
            status,
            body,
            local_port,
            error,
        });
        rest = tail;
    }
    if replies.len() != n {
        bail!(
            "curl gave {} results for {n} requests ({}): {}",
            replies.len(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(replies)
}

/// The labs' VIPs (192.0.2.100/32, 2001:db8::100/128 nodad) on `ns`'s eth0, as VRRP would
/// put them on a load balancer.
fn add_vips(ns: &Netns) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", HOST_IF])?;
    // Deprecated, as the daemon's VRRP adds IPv6 VIPs (netlink/addr.rs): never the source of
    // the node's own connections.
    ns.ip(&[
        "addr",
        "add",
        &format!("{VIP_V6}/128"),
        "dev",
        HOST_IF,
        "nodad",
        "preferred_lft",
        "0",
    ])?;
    Ok(())
}

/// Starts nginx in `ns` answering `body\n` (the labs' real-server configuration, under the
/// namespace's directory).
pub fn spawn_nginx(ns: &Netns, body: &str) -> Result<Proc> {
    let conf = ns.dir().join("nginx.conf");
    fs::write(&conf, nginx_conf(ns.dir(), body))
        .with_context(|| format!("write {}", conf.display()))?;
    let dir = ns.dir().to_string_lossy().into_owned();
    ns.spawn(&[
        "nginx",
        "-p",
        &dir,
        "-e",
        &format!("{dir}/error.log"),
        "-c",
        &conf.to_string_lossy(),
    ])
}

/// The TUN topology: the real servers on a subnet of their own, behind a router.
///
/// ```text
///  {p}c  eth0 192.0.2.1   2001:db8::1   ──┐ {p}fbr: the front LAN
///  {p}lb eth0 192.0.2.2   2001:db8::2   ──┤   (routes to the back via .254 / ::fe)
///  {p}rt eth0 192.0.2.254 2001:db8::fe  ──┘
///  {p}rt eth1 203.0.113.254 2001:db8:3::fe ──┐ {p}bbr: the back LAN
///  {p}rsI eth0 203.0.113.(10+I) 2001:db8:3::(10+I), default via the router, nginx :80 ──┘
/// ```
///
/// The real servers get no VIP: `lb-daemon realserver start --tunnel` is what the tests
/// run there. The LB gets the VIPs from [`TunLab::add_vip_to_lb`].
pub struct TunLab {
    // Field order is drop order: hosts first, the bridges last.
    servers: Vec<Netns>,
    client: Netns,
    lb: Netns,
    router: Netns,
    front: Netns,
    back: Netns,
    nginx: Vec<Proc>,
}

/// The back LAN's addresses.
pub fn tun_server_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, 10 + i as u8)
}

pub fn tun_server_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x10 + i as u16)
}

impl TunLab {
    pub fn new(prefix: &str, n_servers: usize) -> Result<TunLab> {
        let front = Lan::new(&format!("{prefix}f"))?;
        let back = Lan::new(&format!("{prefix}b"))?;
        let client = front.host("c", 1, CLIENT_V4, CLIENT_V6)?;
        let lb = front.host("lb", 2, LB_V4, LB_V6)?;
        let router = front.host(
            "rt",
            99,
            Ipv4Addr::new(192, 0, 2, 254),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe),
        )?;
        // The router's second leg, on the back LAN.
        back.bridge().ip(&[
            "link",
            "add",
            "to-rt",
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "netns",
            router.name(),
        ])?;
        back.bridge()
            .ip(&["link", "set", "to-rt", "master", BRIDGE, "up"])?;
        router.ip(&["addr", "add", "203.0.113.254/24", "dev", "eth1"])?;
        router.ip(&["addr", "add", "2001:db8:3::fe/64", "dev", "eth1", "nodad"])?;
        router.ip(&["link", "set", "eth1", "up"])?;
        router.sysctls(&[
            ("net.ipv4.conf.all.forwarding", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // The real servers answer from the VIP, which is routed to the front: strict
            // reverse-path filtering would drop every reply.
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.eth1.rp_filter", "0"),
        ])?;
        // The load balancer reaches the back through the router; its FIB lookups need
        // forwarding on (bpf_fib_lookup refuses otherwise).
        lb.ip(&["route", "add", "203.0.113.0/24", "via", "192.0.2.254"])?;
        lb.ip(&["route", "add", "2001:db8:3::/64", "via", "2001:db8::fe"])?;
        lb.sysctls(&[
            ("net.ipv4.conf.all.forwarding", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
        ])?;
        let mut servers = Vec::with_capacity(n_servers);
        let mut nginx = Vec::with_capacity(n_servers);
        for i in 1..=n_servers {
            let name = format!("rs{i}");
            let ns = back.host(&name, 10 + i as u8, tun_server_v4(i), tun_server_v6(i))?;
            ns.ip(&["route", "add", "default", "via", "203.0.113.254"])?;
            ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:3::fe"])?;
            nginx.push(spawn_nginx(&ns, &name)?);
            servers.push(ns);
        }
        let lab = TunLab {
            servers,
            client,
            lb,
            router,
            front: front.into_bridge(),
            back: back.into_bridge(),
            nginx,
        };
        // The real servers' decapsulator runs in native mode, where a veth frame loses its
        // "checksum to be filled in" state: every sender computes its checksums itself, as
        // for the DR lab's native mode.
        for ns in lab.namespaces().filter(|ns| !ns.name().ends_with("br")) {
            for dev in ["eth0", "eth1"] {
                if ns.link_is_up(dev) {
                    ns.exec(&["ethtool", "-K", dev, "tx", "off"])?;
                }
            }
        }
        // Every server answers the load balancer through the router, over IPv4 and IPv6:
        // the routes work and every neighbour on the way is resolved before a test starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        for (i, ns) in lab.servers.iter().enumerate() {
            let want = format!("rs{}\n", i + 1);
            for host in [
                tun_server_v4(i + 1).to_string(),
                tun_server_v6(i + 1).to_string(),
            ] {
                let url = url_for(&host);
                wait_until(
                    &format!("nginx in {} at {url}", ns.name()),
                    deadline.saturating_duration_since(Instant::now()),
                    || {
                        lab.lb
                            .exec(&["curl", "-s", "-g", "--max-time", "1", &url])
                            .is_ok_and(|b| b == want)
                    },
                )?;
            }
        }
        Ok(lab)
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn lb(&self) -> &Netns {
        &self.lb
    }

    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// Real server `i`, 1-based.
    pub fn server(&self, i: usize) -> &Netns {
        &self.servers[i - 1]
    }

    pub fn servers(&self) -> &[Netns] {
        &self.servers
    }

    pub fn nginx(&self, i: usize) -> &Proc {
        &self.nginx[i - 1]
    }

    /// The VIPs on the LB's eth0, as VRRP would put them.
    pub fn add_vip_to_lb(&self) -> Result<()> {
        add_vips(&self.lb)
    }

    /// `n` requests from the client (see [`curl_batch_from`]).
    pub fn curl_batch(&self, host: &str, n: usize) -> Result<Vec<String>> {
        curl_batch_from(&self.client, host, n)
    }

    fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        self.servers.iter().chain([
            &self.client,
            &self.lb,
            &self.router,
            &self.front,
            &self.back,
        ])
    }
}

impl Drop for TunLab {
    fn drop(&mut self) {
        let procs: Vec<Proc> = self
            .namespaces()
            .flat_map(|ns| std::mem::take(&mut *ns.procs.lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        stop_all(&procs, Duration::from_secs(2));
    }
}

impl Drop for DrLab {
    fn drop(&mut self) {
        // Children of every namespace first; then the fields drop (hosts, then the bridge),
        // each deleting its namespace.
        self.stop_everything();
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn netns_exists(name: &str) -> bool {
        Path::new("/run/netns").join(name).exists()
    }

    #[test]
    fn prefixes_are_unique_and_short() {
        let a = unique_prefix("dr");
        let b = unique_prefix("dr");
        assert_ne!(a, b);
        assert!(a.starts_with("dr"));
        assert!(unique_prefix("toolongtag!").len() <= 14);
        assert!(format!("{a}br").len() <= 15);
    }

    #[test]
    fn wait_until_names_what_timed_out() {
        let err = wait_until("the moon", Duration::from_millis(20), || false).unwrap_err();
        assert!(err.to_string().contains("the moon"), "{err}");
        let mut n = 0;
        wait_until("three calls", Duration::from_secs(5), || {
            n += 1;
            n == 3
        })
        .unwrap();
    }

    #[test]
    fn netns_exec_spawn_run_in() {
        if !require_root("netns_exec_spawn_run_in") {
            return;
        }
        let name = format!("{}x", unique_prefix("t"));
        let ns = Netns::new(&name).unwrap();
        // exec: output, and errors that carry the command line and stderr.
        let out = ns.exec(&["ip", "-o", "link", "show", "lo"]).unwrap();
        assert!(out.contains("LOOPBACK,UP"), "{out}");
        let err = ns.exec(&["ip", "link", "show", "nosuchdev"]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("nosuchdev") && msg.contains("does not exist"),
            "{msg}"
        );
        // sysctl lands in the namespace only.
        ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
        assert_eq!(
            ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"])
                .unwrap()
                .trim(),
            "1"
        );
        // run_in: a thread in the namespace sees its links only (lo).
        let ifindex_lo = ns
            .run_in(|| {
                let name = std::ffi::CString::new("lo").unwrap();
                let dev = std::ffi::CString::new(HOST_IF).unwrap();
                // SAFETY: valid C strings.
                unsafe {
                    (
                        libc::if_nametoindex(name.as_ptr()),
                        libc::if_nametoindex(dev.as_ptr()),
                    )
                }
            })
            .unwrap();
        assert_eq!(ifindex_lo, (1, 0));
        // spawn: the pid is the program's (ip netns exec execs), and drop kills it.
        let p = ns.spawn(&["sleep", "60"]).unwrap();
        wait_until("sleep to exec", Duration::from_secs(5), || {
            fs::read_to_string(format!("/proc/{}/comm", p.pid())).is_ok_and(|c| c.trim() == "sleep")
        })
        .unwrap();
        let p2 = ns
            .spawn(&["sh", "-c", "echo hello; echo oops >&2"])
            .unwrap();
        p2.wait_timeout(Duration::from_secs(5))
            .unwrap()
            .expect("sh exits");
        assert_eq!(p2.read_stdout(), "hello\n");
        assert_eq!(p2.read_stderr(), "oops\n");
        let pid = p.pid();
        let dir = ns.dir().to_path_buf();
        drop(ns);
        assert!(!p.is_running(), "sleep {pid} still running");
        assert!(!netns_exists(&name));
        assert!(!dir.exists());
    }

    #[test]
    fn run_in_propagates_panics() {
        if !require_root("run_in_propagates_panics") {
            return;
        }
        let name = format!("{}x", unique_prefix("t"));
        let ns = Netns::new(&name).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ns.run_in(|| panic!("inside")).unwrap();
        }));
        assert!(r.is_err());
        drop(ns);
        assert!(!netns_exists(&name));
    }

    #[test]
    fn dr_lab_three_servers() {
        if !require_lab("dr_lab_three_servers") {
            return;
        }
        let prefix = unique_prefix("dr");
        let t0 = Instant::now();
        let lab = DrLab::new(&prefix, 3).unwrap();
        eprintln!("DrLab::new(3 servers): {:?}", t0.elapsed());
        let names: Vec<String> = lab.namespaces().map(|n| n.name().to_string()).collect();
        assert_eq!(names.len(), 6);
        assert!(names.iter().all(|n| netns_exists(n)));

        // Every real server answers on its own addresses.
        for i in 1..=3 {
            let want = format!("rs{i}");
            assert_eq!(
                lab.curl(&server_v4(i).to_string(), 1).unwrap(),
                [want.as_str()]
            );
            assert_eq!(lab.curl(&server_v6(i).to_string(), 1).unwrap(), [want]);
        }

        // Nobody answers for the VIP before the LB has it: real servers ignore ARP and
        // neighbour solicitations for addresses on lo.
        for vip in [VIP_V4.to_string(), VIP_V6.to_string()] {
            let t = Instant::now();
            let r = lab.curl_batch_raw(&vip, 1, Duration::from_secs(1)).unwrap();
            assert_eq!(r[0].status, 0, "{vip} answered before add_vip_to_lb: {r:?}");
            assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
            assert_eq!(
                lab.client().neigh_mac(&vip).unwrap(),
                None,
                "{vip} resolved"
            );
        }

        lab.add_vip_to_lb().unwrap();
        let lb_mac = lab.lb_mac().unwrap();
        assert_eq!(lb_mac, parse_mac("02:db:00:00:00:02").unwrap());
        for vip in [VIP_V4.to_string(), VIP_V6.to_string()] {
            // No XDP program: the LB's kernel refuses the connection; what matters is that
            // the client resolved the VIP to the LB.
            let r = lab.curl_batch_raw(&vip, 1, Duration::from_secs(1)).unwrap();
            assert_eq!(r[0].status, 0, "{r:?}");
            // Each try sends traffic again: a resolution that failed (a lost ARP under
            // load) is not retried by the kernel until something is sent.
            wait_until(
                &format!("{vip} to resolve"),
                Duration::from_secs(10),
                || {
                    lab.client().neigh_mac(&vip).ok().flatten().is_some() || {
                        let _ = lab.curl_batch_raw(&vip, 1, Duration::from_millis(300));
                        false
                    }
                },
            )
            .unwrap();
            assert_eq!(lab.client().neigh_mac(&vip).unwrap(), Some(lb_mac), "{vip}");
        }

        // Accessors.
        assert_eq!(lab.server_macs().unwrap().len(), 3);
        assert!(lab.lb_ifindex().unwrap() > 1);
        assert!(lab.lb_peer_ifindex().unwrap() > 1);
        assert_eq!(lab.lb_peer_port().1, "to-lb");
        lab.set_tx_offload_off().unwrap();
        let k = lab.lb().exec(&["ethtool", "-k", HOST_IF]).unwrap();
        assert!(k.contains("tx-checksumming: off"), "{k}");

        let nginx_pids: Vec<u32> = (1..=3).map(|i| lab.nginx(i).pid()).collect();
        drop(lab);
        for n in &names {
            assert!(!netns_exists(n), "{n} left behind");
        }
        for pid in nginx_pids {
            assert!(
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map_or(true, |c| c.trim() != "nginx"),
                "nginx {pid} left behind"
            );
        }
    }

    /// Direct routing without a load balancer: the client's neighbour entry for the VIP points
    /// at a real server's MAC (what the XDP program does by rewriting the destination MAC).
    /// The real server accepts the packet for its lo VIP and replies straight from its own
    /// MAC with the VIP as source, on IPv4 and IPv6.
    #[test]
    fn dr_by_static_neighbour_and_timings() {
        if !require_lab("dr_by_static_neighbour_and_timings") {
            return;
        }
        let t0 = Instant::now();
        let lab = DrLab::new(&unique_prefix("dr"), 2).unwrap();
        eprintln!("DrLab::new(2 servers): {:?}", t0.elapsed());
        let macs = lab.server_macs().unwrap();
        let lb_mac = fmt_mac(&lab.lb_mac().unwrap());
        let rs2 = fmt_mac(&macs[1]);
        for vip in [VIP_V4.to_string(), VIP_V6.to_string()] {
            lab.client()
                .ip(&[
                    "neigh",
                    "replace",
                    &vip,
                    "lladdr",
                    &rs2,
                    "dev",
                    HOST_IF,
                    "nud",
                    "permanent",
                ])
                .unwrap();
        }
        let cap = lab
            .client()
            .capture(HOST_IF, "tcp port 80 or arp or icmp6")
            .unwrap();
        assert_eq!(lab.curl(&VIP_V4.to_string(), 2).unwrap(), ["rs2", "rs2"]);
        assert_eq!(lab.curl(&VIP_V6.to_string(), 2).unwrap(), ["rs2", "rs2"]);
        let lines = cap
            .wait_for("replies from rs2", Duration::from_secs(5), |l| {
                l.iter()
                    .filter(|l| l.contains(&format!("{}.80 >", VIP_V6)))
                    .count()
                    >= 2
            })
            .unwrap();
        let lines_after = cap.stop().unwrap();
        assert!(lines_after.len() >= lines.len());
        let replies: Vec<&String> = lines_after
            .iter()
            .filter(|l| {
                l.contains(&format!("{VIP_V4}.80 >")) || l.contains(&format!("{VIP_V6}.80 >"))
            })
            .collect();
        assert!(replies.len() >= 8, "{lines_after:#?}");
        for r in &replies {
            assert!(
                r.starts_with(&format!("{rs2} >")) || r.contains(&format!(" {rs2} > ")),
                "{r}"
            );
            assert!(!r.contains(&lb_mac), "{r}");
        }
        let log = fs::read_to_string(lab.access_log(2)).unwrap();
        assert!(
            log.lines().filter(|l| l.starts_with("192.0.2.1 ")).count() >= 2,
            "{log}"
        );
        assert!(
            log.lines()
                .filter(|l| l.starts_with("2001:db8::1 "))
                .count()
                >= 2,
            "{log}"
        );
        // No real server ever announced the VIP (ARP reply / neighbour advertisement).
        for l in &lines_after {
            let vip_claim = (l.contains("ARP") && l.contains(&format!("{VIP_V4} is-at")))
                || (l.contains("neighbor advertisement")
                    && l.contains(&format!("tgt is {VIP_V6}")));
            assert!(!vip_claim, "{l}");
        }

        // Timings: 300 requests to a real server's own address, one process each and batched.
        let t = Instant::now();
        let bodies = lab.curl(&server_v4(1).to_string(), 300).unwrap();
        eprintln!("300 requests, one curl process each: {:?}", t.elapsed());
        assert!(bodies.iter().all(|b| b == "rs1"));
        let t = Instant::now();
        let replies = lab
            .curl_batch_raw(&VIP_V6.to_string(), 300, Duration::from_secs(2))
            .unwrap();
        eprintln!("300 requests, one curl process: {:?}", t.elapsed());
        assert!(
            replies.iter().all(|r| r.status == 200 && r.body == "rs2"),
            "{replies:?}"
        );
        let mut ports: Vec<u16> = replies.iter().map(|r| r.local_port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 300, "requests reused connections");
    }

    #[test]
    fn lab_is_torn_down_when_a_test_panics() {
        if !require_lab("lab_is_torn_down_when_a_test_panics") {
            return;
        }
        let prefix = unique_prefix("dr");
        let names = Mutex::new(Vec::new());
        let pids = Mutex::new(Vec::new());
        let r = std::panic::catch_unwind(|| {
            let lab = DrLab::new(&prefix, 1).unwrap();
            *names.lock().unwrap() = lab.namespaces().map(|n| n.name().to_string()).collect();
            pids.lock().unwrap().push(lab.nginx(1).pid());
            let _cap = lab.client().capture(HOST_IF, "tcp").unwrap();
            pids.lock().unwrap().push(_cap.proc.pid());
            panic!("test failure with a lab alive");
        });
        assert!(r.is_err());
        let names = names.into_inner().unwrap();
        assert_eq!(names.len(), 4);
        for n in &names {
            assert!(!netns_exists(n), "{n} left behind");
        }
        for pid in pids.into_inner().unwrap() {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            assert!(
                comm.trim() != "nginx" && comm.trim() != "tcpdump",
                "{pid} {comm}"
            );
        }
    }

    #[test]
    fn two_labs_at_once() {
        if !require_lab("two_labs_at_once") {
            return;
        }
        let a = DrLab::new(&unique_prefix("dr"), 1).unwrap();
        let b = DrLab::new(&unique_prefix("dr"), 2).unwrap();
        assert_ne!(a.prefix(), b.prefix());
        assert_eq!(
            a.curl_batch(&server_v4(1).to_string(), 3).unwrap(),
            ["rs1"; 3]
        );
        assert_eq!(
            b.curl_batch(&server_v6(2).to_string(), 3).unwrap(),
            ["rs2"; 3]
        );
        let names: Vec<String> = a
            .namespaces()
            .chain(b.namespaces())
            .map(|n| n.name().to_string())
            .collect();
        drop(a);
        // b is unaffected by a's teardown.
        assert_eq!(b.curl(&server_v4(1).to_string(), 1).unwrap(), ["rs1"]);
        drop(b);
        assert!(names.iter().all(|n| !netns_exists(n)));
    }
}
