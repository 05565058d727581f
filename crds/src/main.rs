//! `crdgen`: prints the ImageBackup CustomResourceDefinition generated from the Rust type.
//! `cargo run -q -p crdgen > crds/imagebackup.yaml` refreshes the committed file; a test in
//! `shared` fails while it is stale.

fn main() -> std::process::ExitCode {
    match shared::crd::crd_yaml() {
        Ok(yaml) => {
            print!("{yaml}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: cannot serialize the CRD: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
