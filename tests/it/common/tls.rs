//! A certificate authority of one test's own (openssl), and server certificates it signs
//! for the private PostgreSQL and Redis servers of `store_tls`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A CA key and self-signed certificate in a temporary directory (removed on drop).
pub struct TestCa {
    dir: tempfile::TempDir,
    issued: usize,
}

/// A server certificate (PEM) and its unencrypted key, signed by a [`TestCa`].
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The certificate of the CA that signed it.
    pub ca: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl (apt-get install openssl) runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gs-ca-")
            .tempdir()
            .expect("tempdir");
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
            ],
            dir.path(),
        );
        Self { dir, issued: 0 }
    }

    /// The CA certificate (PEM), what a client trusts.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A server certificate for `names` (each a DNS name or an IP address, as subject
    /// alternative names: what TLS clients check the host against).
    pub fn issue(&mut self, names: &[&str]) -> ServerCert {
        self.issued += 1;
        let n = self.issued;
        let (key, csr, cert, ext) = (
            format!("server{n}.key"),
            format!("server{n}.csr"),
            format!("server{n}.crt"),
            format!("server{n}.ext"),
        );
        let sans: Vec<String> = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(_) => format!("IP:{name}"),
                Err(_) => format!("DNS:{name}"),
            })
            .collect();
        std::fs::write(
            self.dir.path().join(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
                sans.join(",")
            ),
        )
        .expect("write extensions");
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={}", names[0]),
            ],
            self.dir.path(),
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &n.to_string(),
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
            self.dir.path(),
        );
        ServerCert {
            cert: self.dir.path().join(cert),
            key: self.dir.path().join(key),
            ca: self.cert_file(),
        }
    }
}
