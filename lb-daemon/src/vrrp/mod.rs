//! VRRP (RFC 9568 v3, RFC 3768 v2): the wire format and the state machine, both without I/O.
pub mod fsm;
pub mod packet;
