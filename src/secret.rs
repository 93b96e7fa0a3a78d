//! A secret string that never prints itself: the AccessKey secret, an STS token, a token-bearing
//! URL. A leaf, so that configuration and credentials can both hold one.

use std::fmt;

use zeroize::Zeroizing;

/// A secret string: zeroized on drop, `***` in `Debug`, no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret itself; call only where it is used (signing, sending).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
