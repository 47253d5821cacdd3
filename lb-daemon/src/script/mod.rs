//! Running the programs a configuration names: health checks' `MISC_CHECK` and
//! `notify_up`/`notify_down`, VRRP's `vrrp_script` tracking and its notify hooks all start
//! their programs here, so one set of rules holds for every one of them:
//!
//! - as the script user ([`ScriptUser`]: `global_defs.script_user`, a script's own `user`,
//!   or root; an unknown name is an error at start, never a fallback to root);
//! - in its own process group, stdin/stdout/stderr on `/dev/null`, `/` as working directory,
//!   killed with its group (SIGTERM, then SIGKILL after [`KILL_GRACE`]) when it outlives its
//!   timeout ([`run_command`]);
//! - with keepalived's `enable_script_security`: a program run as root that someone else
//!   could replace is refused ([`check_safety`]).
mod run;
mod safety;
mod user;

pub(crate) use run::spawn;
pub use run::{run_command, RunOutcome, DEFAULT_HOOK_TIMEOUT, KILL_GRACE};
pub use safety::{check_runnable, check_safety};
pub use user::{ScriptUser, UserError};
