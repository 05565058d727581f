//! Image references as users and workloads write them: parsing never panics, and a reference
//! that parses prints back to a string that parses to the same reference, whose backup target
//! (if any) is itself a valid reference in the backup registry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::naming::{BackupRegistry, NamingPolicy};
use shared::reference::Reference;

fuzz_target!(|data: &str| {
    for parsed in [Reference::parse(data), Reference::parse_normalized(data)] {
        let Ok(reference) = parsed else { continue };
        let printed = reference.to_string();
        let again = Reference::parse(&printed).expect("a printed reference parses");
        assert_eq!(again, reference, "{data:?} printed as {printed:?}");
        let registry: BackupRegistry = "backup.example:5000/mirror".parse().expect("registry");
        let policy = NamingPolicy::flat(registry);
        if let Ok(target) = policy.target(&reference.clone().with_default_tag()) {
            assert!(
                policy.is_backup(&target),
                "{target} is in the backup registry"
            );
            Reference::parse(&target.to_string()).expect("a target parses");
        }
    }
});
