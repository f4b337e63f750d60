//! RSA keys for emulated GitHub Apps, generated in-process (no `openssl` binary needed).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;

use super::EmulatorError;

/// A GitHub App's key pair in the forms GitHub hands out and accepts.
#[derive(Clone)]
pub struct AppKey {
    /// `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1), the form GitHub's "Generate a private key"
    /// downloads.
    pub private_key_pem: String,
    /// `-----BEGIN PRIVATE KEY-----` (PKCS#8), the same key.
    pub private_key_pkcs8_pem: String,
    /// `-----BEGIN PUBLIC KEY-----` (SPKI), what the emulator verifies JWTs with.
    pub public_key_pem: String,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKey")
            .field("public_key_pem", &self.public_key_pem)
            .finish_non_exhaustive()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER TLV: (tag, contents, rest).
fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *bytes.first()?;
    let first = *bytes.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *bytes.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let content = bytes.get(header..header + len)?;
    Some((tag, content, bytes.get(header + len..)?))
}

/// PKCS#8 `PrivateKeyInfo` → the PKCS#1 `RSAPrivateKey` inside it.
fn pkcs8_to_pkcs1(der: &[u8]) -> Option<Vec<u8>> {
    let (0x30, info, _) = tlv(der)? else {
        return None;
    };
    let (0x02, _version, rest) = tlv(info)? else {
        return None;
    };
    let (0x30, _alg, rest) = tlv(rest)? else {
        return None;
    };
    let (0x04, key, _) = tlv(rest)? else {
        return None;
    };
    Some(key.to_vec())
}

/// Generates a 2048-bit RSA key pair for a test App.
pub fn generate_app_key() -> Result<AppKey, EmulatorError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| EmulatorError::KeyGeneration)?;
    let pkcs8 = pair.as_der().map_err(|_| EmulatorError::KeyGeneration)?;
    let pkcs1 = pkcs8_to_pkcs1(pkcs8.as_ref()).ok_or(EmulatorError::KeyGeneration)?;
    let spki = pair
        .public_key()
        .as_der()
        .map_err(|_| EmulatorError::KeyGeneration)?;
    Ok(AppKey {
        private_key_pem: pem("RSA PRIVATE KEY", &pkcs1),
        private_key_pkcs8_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
        public_key_pem: pem("PUBLIC KEY", spki.as_ref()),
    })
}

/// Signs an App JWT (`iss` = app id) the way an App client does; for tests.
pub fn app_jwt(
    private_key_pem: &str,
    app_id: u64,
    iat: i64,
    exp: i64,
) -> Result<String, EmulatorError> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.as_bytes())
        .map_err(|source| EmulatorError::BadPublicKey { source })?;
    let claims = serde_json::json!({"iat": iat, "exp": exp, "iss": app_id.to_string()});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .map_err(|source| EmulatorError::BadPublicKey { source })
}
