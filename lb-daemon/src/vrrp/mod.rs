//! VRRP (RFC 9568 v3, RFC 3768 v2) and what keepalived adds around it. The wire format
//! (`packet`) and the state machine (`fsm`) are pure; `vip` and `garp` talk to the kernel.
pub mod check;
pub mod fsm;
pub mod garp;
pub mod notify;
pub mod packet;
pub mod runtime;
pub mod socket;
pub mod track;
pub mod vip;
