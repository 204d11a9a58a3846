//! Loading a certificate chain and its private key from PEM files, checked as a pair. Every error
//! names the config field it comes from.

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::SystemTime;

/// The files of one listener's certificate and the config fields that name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub cert_field: &'static str,
    pub cert_path: String,
    pub key_field: &'static str,
    pub key_path: String,
}

/// A certificate ready for handshakes, with its end-entity certificate's not-after time.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Unix seconds; `None` when the certificate's validity could not be read.
    pub not_after: Option<i64>,
}

/// What identifies the files' contents between polls: a changed stamp means a reload.
pub type Stamp = [Option<(SystemTime, u64)>; 2];

impl Pair {
    /// Reads and checks both files: a chain of at least one certificate, one private key of a type
    /// rustls signs with, and a key that matches the first certificate.
    pub fn load(&self) -> Result<Loaded, String> {
        let cert_pem = std::fs::read(&self.cert_path)
            .map_err(|e| format!("{}: cannot read {:?}: {e}", self.cert_field, self.cert_path))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: bad PEM in {:?}: {e}", self.cert_field, self.cert_path))?;
        if chain.is_empty() {
            return Err(format!(
                "{}: no CERTIFICATE block in {:?}",
                self.cert_field, self.cert_path
            ));
        }
        let key_pem = std::fs::read(&self.key_path)
            .map_err(|e| format!("{}: cannot read {:?}: {e}", self.key_field, self.key_path))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "{}: no usable private key in {:?}: {e}",
                self.key_field, self.key_path
            )
        })?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| {
            format!(
                "{}: unsupported private key in {:?}: {e}",
                self.key_field, self.key_path
            )
        })?;
        let not_after = super::expiry::not_after(&chain[0]);
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(format!(
                    "{}: the key in {:?} does not match the certificate of {} ({:?})",
                    self.key_field, self.key_path, self.cert_field, self.cert_path
                ))
            }
            // A key type whose public half rustls cannot derive: nothing to compare.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => {
                return Err(format!(
                    "{}: unusable certificate in {:?}: {e}",
                    self.cert_field, self.cert_path
                ))
            }
        }
        Ok(Loaded {
            key: Arc::new(certified),
            not_after,
        })
    }

    /// Modification time and size of both files (`None` for a file that cannot be read).
    pub fn stamp(&self) -> Stamp {
        let of = |path: &str| {
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        };
        [of(&self.cert_path), of(&self.key_path)]
    }
}
