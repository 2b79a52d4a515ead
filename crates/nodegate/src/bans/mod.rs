//! Bans (issue 13, under way): filters that read who failed, from sshd's logs and the gateway's own
//! refusals. So far: the sshd filter and `nodegate filter sshd`.

pub mod sshd;
