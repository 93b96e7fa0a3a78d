//! The process's exit codes, after BSD's sysexits: the same cause gives the same code in every
//! command (the README's table lists them).

/// The command line is wrong: a flag, a file a flag names, standard input (`EX_USAGE`).
pub const EX_USAGE: u8 = 64;
/// Something the gateway needs cannot be had now: a credential source that does not answer, an
/// address already in use, a gateway the client cannot reach (`EX_UNAVAILABLE`). Trying again
/// later may succeed.
pub const EX_UNAVAILABLE: u8 = 69;
/// A fault of the gateway itself (`EX_SOFTWARE`).
pub const EX_SOFTWARE: u8 = 70;
/// The configuration is wrong: a key, a variable, a file it names, no credential configured
/// (`EX_CONFIG`). Trying again without changing it fails again.
pub const EX_CONFIG: u8 = 78;
