//! The server's lifecycle, broadcast to every accept loop, connection and background task.

/// Where the whole gateway is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; connections finish what they have in flight, then close.
    Draining,
    /// Drain timeout passed: close everything now.
    Stopped,
}
