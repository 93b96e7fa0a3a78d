//! Test certificates made with rcgen: a CA, leaf certificates it signs, and [`Pki`], the files a
//! gateway serving TLS (and mTLS) needs, in a temporary directory removed when dropped.

use std::time::Duration;

use dds_gateway::pb::engine_version_service_client::EngineVersionServiceClient;
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A CA able to sign certificates.
pub type Issuer = rcgen::Issuer<'static, rcgen::KeyPair>;

/// A certificate and its private key, as PEM.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A self-signed CA named `name`, and its certificate as PEM.
pub fn ca(name: &str) -> (Issuer, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    (rcgen::Issuer::new(params, key), pem)
}

/// A certificate signed by `issuer` with subject CN `common_name`, the subject alternative names
/// `sans` (DNS names, or IP addresses) and one extended key usage.
pub fn leaf(
    issuer: &Issuer,
    common_name: &str,
    sans: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> Pem {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(ToString::to_string).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A CA, a server certificate for `localhost`, and client certificates, as PEM files.
pub struct Pki {
    pub dir: TempDir,
    pub ca: String,
}

impl Pki {
    /// Writes the server's files and returns the `[server]` keys that use them (with
    /// `client_ca`, the CA is also the one client certificates must come from).
    pub fn new(client_ca: bool) -> (Self, Issuer, String) {
        let dir = tempfile::tempdir().unwrap();
        let (issuer, ca) = ca("dds-gateway test ca");
        let server = leaf(
            &issuer,
            "gateway",
            &["localhost"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        let file = |name: &str| dir.path().join(name);
        std::fs::write(file("server.pem"), &server.cert).unwrap();
        std::fs::write(file("server.key"), &server.key).unwrap();
        std::fs::write(file("ca.pem"), &ca).unwrap();
        let mut keys = format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            file("server.pem"),
            file("server.key")
        );
        if client_ca {
            keys += &format!("client_ca = {:?}\n", file("ca.pem"));
        }
        (Self { dir, ca }, issuer, keys)
    }

    /// A gRPC client of the gateway at `addr` over TLS, presenting `identity` if given.
    pub async fn client(
        &self,
        addr: std::net::SocketAddr,
        identity: Option<&Pem>,
    ) -> Result<EngineVersionServiceClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        if let Some(pem) = identity {
            tls = tls.identity(Identity::from_pem(&pem.cert, &pem.key));
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(EngineVersionServiceClient::new(channel))
    }
}
