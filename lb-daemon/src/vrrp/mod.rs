//! VRRP (RFC 9568 v3, RFC 3768 v2) and what keepalived adds around it. The wire format
//! (`packet`), the state machine (`fsm`) and the policy around it (`unit`: what to do, in
//! which order, when) are pure; `runtime` carries that out, and `vip` and `garp` talk to the
//! kernel.
pub mod check;
pub mod fsm;
pub mod garp;
pub mod notify;
pub mod packet;
pub mod process;
pub mod record;
pub mod runtime;
pub mod socket;
pub mod track;
pub mod unit;
pub mod vmac;
pub mod vmac_mld;
