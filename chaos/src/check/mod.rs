//! Checkers: pure functions from a recorded history to a verdict. They know nothing of
//! processes, sockets or faults, so known-bad histories can be fed to them in tests.

pub mod availability;
pub mod linearizable;
pub mod lost;
pub mod media;
pub mod owners;
pub mod recovery;
