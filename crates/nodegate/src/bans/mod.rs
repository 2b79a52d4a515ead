//! Bans: a fail2ban built into the gateway. `sshd` reads sshd's log lines (also behind `nodegate
//! filter sshd`), `follow` follows a log file across rotation and truncation, `jail` is a jail's
//! arithmetic (findtime, maxretry, incremental bantime, IPv6 escalation, bounded tables), `engine`
//! feeds jails from their sources, `rails` says who is never banned, `list` holds the decisions
//! (persisted, followed), `nft` enforces them in the kernel and `share` across a fleet.

pub mod engine;
pub mod follow;
pub mod jail;
pub mod journal;
pub mod list;
pub mod nft;
pub mod rails;
pub mod share;
pub mod sshd;
