//! `SSL_GET`'s TLS client (rustls over tokio): one `ClientConfig` per check, built when the
//! checks start (a CA file is read then, and by `lb-daemon check`), shared by its probes.
//!
//! Without `ca_file` the server's certificate is not verified, as in keepalived (whose
//! `SSL_CTX` keeps OpenSSL's `SSL_VERIFY_NONE`), but the handshake's signatures still are:
//! the peer must hold the key of the certificate it shows. With `ca_file` the chain and the
//! name are verified by webpki, as any TLS client does.
use std::{fmt, io, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::check::{Sni, Tls};

/// The most CA certificates one file may hold.
const MAX_CAS: usize = 1000;
/// The largest CA file read (Debian's whole bundle is about 220 KB).
const MAX_CA_FILE: u64 = 4 << 20;

/// A CA file's bytes, at most [`MAX_CA_FILE`]: a path to something endless (a device, a
/// pipe) is an error, not a daemon that fills its memory or waits.
fn read_bounded(path: &std::path::Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    // Opening a FIFO would wait for a writer: only a regular file is read.
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CA_FILE + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_CA_FILE {
        return Err(io::Error::other(format!(
            "larger than {MAX_CA_FILE} bytes: not a CA file"
        )));
    }
    Ok(buf)
}

/// A check's TLS client, compared by what it was built from (the check and the CA file's
/// certificates), so that a reload with a changed CA file restarts the check.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    cas: Option<Arc<Vec<CertificateDer<'static>>>>,
    tls: Tls,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("tls", &self.tls)
            .field("cas", &self.cas.as_ref().map(|c| c.len()))
            .finish()
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.tls == other.tls && self.cas == other.cas
    }
}

impl Eq for TlsClient {}

/// ring's primitives. rustls 0.23.48 deprecates this provider for its lack of post-quantum
/// key exchange; its other one, aws-lc-rs, builds a C library with cmake. A health check's
/// secrecy is not what matters here: the probe reads a status page.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

impl TlsClient {
    /// Reads the CA file, if any; an error says what is wrong with it.
    pub fn new(tls: &Tls) -> Result<Self, String> {
        let provider = provider();
        let (verifier, cas): (Arc<dyn ServerCertVerifier>, _) = match &tls.ca_file {
            None => (
                Arc::new(SignaturesOnly(provider.signature_verification_algorithms)),
                None,
            ),
            Some(ca) => {
                let path = ca.path.display();
                let pem = read_bounded(&ca.path).map_err(|e| format!("{path}: {e}"))?;
                let mut cas = Vec::new();
                for c in CertificateDer::pem_slice_iter(&pem) {
                    cas.push(c.map_err(|e| format!("{path}: {e}"))?);
                    if cas.len() > MAX_CAS {
                        return Err(format!("{path}: more than {MAX_CAS} certificates"));
                    }
                }
                if cas.is_empty() {
                    return Err(format!("{path}: no PEM certificate in it"));
                }
                let mut roots = RootCertStore::empty();
                for c in &cas {
                    roots
                        .add(c.clone())
                        .map_err(|e| format!("{path}: a certificate cannot be a root: {e}"))?;
                }
                let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("{path}: {e}"))?;
                (v as Arc<dyn ServerCertVerifier>, Some(Arc::new(cas)))
            }
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.enable_sni = tls.sni != Sni::Off;
        // Every probe makes a full handshake, as keepalived's do: a resumed session would
        // skip the certificate, so a replaced or expired one would go on passing.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(TlsClient {
            config: Arc::new(config),
            cas,
            tls: tls.clone(),
        })
    }
}

/// The name a url's exchange presents: the configured host name, else the address probed
/// (rustls sends no SNI for an address).
pub fn server_name(name: Option<&str>, ip: std::net::IpAddr) -> io::Result<ServerName<'static>> {
    match name {
        Some(n) => ServerName::try_from(n.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{n:?}: {e}"))),
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

/// keepalived's verification: none of the certificate; the handshake's signature by the
/// certificate's key is checked (without it a man in the middle needs no key at all).
#[derive(Debug)]
struct SignaturesOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SignaturesOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::check::CaFile;

    /// A self-signed P-256 CA (openssl req -x509), valid until 2126.
    const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBjjCCATWgAwIBAgIUESvRutBrG1U6c3kKZMxcoBIhqUowCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRbGItZGFlbW9uIHRlc3QgQ0EwIBcNMjYxMjA3MTE0NTI5WhgP
MjEyNjExMTMxMTQ1MjlaMBwxGjAYBgNVBAMMEWxiLWRhZW1vbiB0ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE1viw+/SMGa7XqmAHhhBVDT6dzqzNwZQH
PxuZH18ZjS37I0/z/1gdae1LaeYunzuDBi4MIwfxl3hyWFN+OP+/zKNTMFEwHQYD
VR0OBBYEFOpN7t1anIMkp6/oHip1EL5JMbizMB8GA1UdIwQYMBaAFOpN7t1anIMk
p6/oHip1EL5JMbizMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIg
YF6Jop1vUEYkurX5yCWlwHYTtmgbfcFpPi3PodHDwc8CID5GOOTOffzL7yOrYKQb
7x6nl9G8dhzM5DB1kAagJs/8
-----END CERTIFICATE-----
";

    fn tls(path: Option<&std::path::Path>, sni: Sni) -> Tls {
        Tls {
            sni,
            ca_file: path.map(|p| CaFile { path: p.into() }),
        }
    }

    #[test]
    fn clients_from_ca_files() {
        let dir = crate::testutil::TempDir::new("tls");
        let none = TlsClient::new(&tls(None, Sni::Off)).unwrap();
        assert!(
            !none.config.enable_sni,
            "keepalived sends no SNI by default"
        );
        assert!(
            TlsClient::new(&tls(None, Sni::Virtualhost))
                .unwrap()
                .config
                .enable_sni
        );

        let missing = dir.path().join("missing.pem");
        let e = TlsClient::new(&tls(Some(&missing), Sni::Off)).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = TlsClient::new(&tls(Some(&empty), Sni::Off)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, CA.replace("MIIB", "!!!!")).unwrap();
        assert!(TlsClient::new(&tls(Some(&broken), Sni::Off)).is_err());

        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CA).unwrap();
        let a = TlsClient::new(&tls(Some(&ca), Sni::Off)).unwrap();
        let b = TlsClient::new(&tls(Some(&ca), Sni::Off)).unwrap();
        assert_eq!(a, b, "same file, same client: a reload keeps the check");
        assert_ne!(a, none);
        // The same path with other certificates in it is another client.
        std::fs::write(&ca, format!("{CA}{CA}")).unwrap();
        assert_ne!(a, TlsClient::new(&tls(Some(&ca), Sni::Off)).unwrap());
    }

    #[test]
    fn names() {
        let ip: std::net::IpAddr = "192.0.2.11".parse().unwrap();
        assert_eq!(
            server_name(None, ip).unwrap(),
            ServerName::IpAddress(ip.into())
        );
        assert!(matches!(
            server_name(Some("www.example.test"), ip).unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name(Some("bad name"), ip).is_err());
    }
}
