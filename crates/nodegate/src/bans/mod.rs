//! Bans (issue 13, under way). So far: the sshd filter (`sshd`, behind `nodegate filter sshd`), a
//! log follower across rotation and truncation (`follow`), and a jail's arithmetic (`jail`:
//! findtime, maxretry, incremental bantime, IPv6 escalation, bounded tables). Not yet: the engine
//! that feeds jails from sources, the `[bans]`/`[[jail]]` config, enforcement in the gateway and
//! nftables, persistence and sharing.

pub mod engine;
pub mod follow;
pub mod jail;
pub mod sshd;
