//! `rejuv tls init|issue`: the fleet's CA and the certificates of its parts.

use anyhow::Context;
use rejuv_net::tls::issue::{self, IssueRequest, DEFAULT_SANS};
use rejuv_net::tls::Role;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum TlsCmd {
    /// Make a fleet CA: DIR/ca.pem (give it to every part) and DIR/ca.key (mode 0600; keep it
    /// off the fleet's machines once the certificates are issued).
    #[command(after_help = "\
Examples:
  rejuv tls init /etc/rejuv/ca
  rejuv tls init ca/ --days 1825")]
    Init {
        /// Directory of the CA (made if missing); an existing CA there is never overwritten.
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Sign a certificate for one part: OUT/NAME.pem and OUT/NAME.key (mode 0600). An agent's
    /// NAME is its server id; the controller checks it against the server of that address.
    /// Issuing again replaces both files: the part takes them without a restart.
    #[command(after_help = "\
Examples:
  rejuv tls issue --ca /etc/rejuv/ca --role controller --name controller --out /etc/rejuv/tls
  rejuv tls issue --ca ca/ --role agent --name s1 --san 10.0.0.11 --san s1.example --out tls/
  rejuv tls issue --ca ca/ --role proxy --name proxy --out tls/ --days 90")]
    Issue {
        /// Directory of the CA (`rejuv tls init`).
        #[arg(long)]
        ca: PathBuf,
        /// controller, agent or proxy.
        #[arg(long)]
        role: String,
        /// The part's name: an agent's server id; `controller` and `proxy` for the others
        /// (what `{name}` becomes in `[tls] cert`).
        #[arg(long)]
        name: String,
        /// A DNS name or IP address the part is reached at (repeatable; default: 127.0.0.1
        /// and localhost).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Directory to write the certificate and key to.
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn run(cmd: TlsCmd) -> anyhow::Result<i32> {
    match cmd {
        TlsCmd::Init { dir, days } => {
            anyhow::ensure!(days >= 1, "--days must be at least 1");
            let (cert, key) = issue::init_ca(&dir, days).context("rejuv tls init")?;
            println!("CA certificate: {}", cert.display());
            println!("CA key: {} (mode 0600)", key.display());
            Ok(0)
        }
        TlsCmd::Issue {
            ca,
            role,
            name,
            sans,
            out,
            days,
        } => {
            anyhow::ensure!(days >= 1, "--days must be at least 1");
            let role: Role = role.parse().map_err(|e| anyhow::anyhow!("--role: {e}"))?;
            let sans = if sans.is_empty() {
                DEFAULT_SANS.iter().map(|s| s.to_string()).collect()
            } else {
                sans
            };
            let (cert, key) = issue::issue(&IssueRequest {
                ca_dir: &ca,
                role,
                name: &name,
                sans: &sans,
                days,
                out_dir: &out,
            })
            .context("rejuv tls issue")?;
            println!("certificate: {} ({role} {name})", cert.display());
            println!("key: {} (mode 0600)", key.display());
            Ok(0)
        }
    }
}
