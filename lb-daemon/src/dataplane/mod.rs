//! Everything between the daemon's view of services and the XDP program's maps.
pub mod maglev;
pub mod neigh;
pub mod ring;
