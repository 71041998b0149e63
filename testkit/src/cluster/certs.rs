//! The test cluster's key material, generated at start: a CA, the API server's serving
//! certificate (127.0.0.1 and localhost), an admin client certificate in `system:masters`, and the
//! key that signs ServiceAccount tokens. Nothing is reused between runs.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// Paths of the files [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub service_account_key: PathBuf,
    pub service_account_public_key: PathBuf,
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name
}

/// Write the CA, serving and admin certificates and the ServiceAccount signing key into `dir`.
pub fn generate(dir: &Path) -> Result<Certs, rcgen::Error> {
    let write = |file: &str, pem: String| {
        let path = dir.join(file);
        std::fs::write(&path, pem).expect("the cluster directory is writable");
        path
    };

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("testkit-cluster-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    serving.distinguished_name = name("kube-apiserver", None);
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &ca)?;

    // The API server maps a client certificate's CN to the user and O to its groups.
    let admin_key = KeyPair::generate()?;
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name = name("testkit-admin", Some("system:masters"));
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &ca)?;

    let service_account = KeyPair::generate()?;
    Ok(Certs {
        ca: write("ca.crt", ca.pem()),
        serving_cert: write("apiserver.crt", serving_cert.pem()),
        serving_key: write("apiserver.key", serving_key.serialize_pem()),
        admin_cert: write("admin.crt", admin_cert.pem()),
        admin_key: write("admin.key", admin_key.serialize_pem()),
        service_account_key: write("service-account.key", service_account.serialize_pem()),
        service_account_public_key: write("service-account.pub", service_account.public_key_pem()),
    })
}
