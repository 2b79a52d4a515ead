//! Bans (issue 13, under way). So far: the sshd filter (`sshd`, behind `nodegate filter sshd`),
//! and a jail's arithmetic (`jail`: findtime, maxretry, incremental bantime, IPv6 escalation, bounded
//! tables), not yet fed by a source nor enforced by the gateway or nftables.

pub mod jail;
pub mod sshd;
