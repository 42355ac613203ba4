//! `verify` covers the layer cache: a file changed, added or removed inside a cached layer would
//! reach every rootfs unpacked from it, so verify compares each cached layer with its verified
//! blob and `--repair` extracts it again.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{fast_client, unpacking_harness};
use haul::config::Config;
use haul::digest::Digest;
use haul::progress::Silent;
use haul::registry::Anonymous;
use haul::unpack::{UnpackOptions, unpack};
use haul::verify;
use test_registry::{
    Format, Image, ImageBuilder, LayerBuilder, Pusher, RealRegistry, RegistryOptions,
};

struct Pulled {
    h: common::Harness,
    image: Image,
    name: String,
    _registry: RealRegistry,
}

async fn pulled() -> Pulled {
    let registry = RealRegistry::start(RegistryOptions::default())
        .await
        .unwrap();
    let base = LayerBuilder::new()
        .add_dir("etc", 0o755)
        .add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .add_file("etc/shadow", b"root:*:19000::::::\n", 0o000)
        .add_dir("usr/bin", 0o755)
        .add_file("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
        .add_hardlink("usr/bin/tool-alias", "usr/bin/tool")
        .add_symlink("bin", "usr/bin")
        .finish_gzip();
    let top = LayerBuilder::new()
        .add_file("etc/motd", b"welcome\n", 0o644)
        .add_whiteout("usr/bin/tool-alias")
        .add_hardlink("etc/tool-again", "usr/bin/tool")
        .finish_gzip();
    let image = ImageBuilder::new(Format::Oci)
        .platform("linux", "amd64", None)
        .layers(vec![base, top])
        .build();
    Pusher::new(&registry.url())
        .push_image("team/cached", "1", &image)
        .await
        .unwrap();
    let h = unpacking_harness();
    let name = format!("{}/team/cached:1", registry.host());
    h.pull(&name).await.unwrap();
    let clean = verify::verify(&h.store, &[]).unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    Pulled {
        h,
        image,
        name,
        _registry: registry,
    }
}

impl Pulled {
    fn chain(&self, index: usize) -> Digest {
        common::chains(&self.image)[index].clone()
    }

    fn diff(&self, index: usize) -> PathBuf {
        let chain = self.chain(index);
        self.h
            .store
            .root()
            .join("layers")
            .join(chain.algorithm().name())
            .join(chain.hex())
            .join("diff")
    }

    fn unpacked(&self, dir: &str) -> PathBuf {
        let entry = self.h.store.find_ref(&self.name).unwrap().unwrap();
        let target = self.h.dir.path().join(dir);
        unpack(
            &self.h.store,
            &entry,
            &target,
            &UnpackOptions::for_current_user(),
            &Silent,
        )
        .unwrap();
        target
    }

    /// The problems verify reports about cached layers, as (chain ID, image).
    fn cache_problems(&self) -> Vec<(Digest, String)> {
        let report = verify::verify(&self.h.store, &[]).unwrap();
        eprintln!("{:?}", report.problems);
        report
            .problems
            .iter()
            .map(|p| (p.digest.clone(), p.image.clone()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_modified_in_the_layer_cache_is_found_by_verify() {
    let p = pulled().await;
    // Same size, same mode, different bytes: only the content tells.
    let file = p.diff(0).join("etc/passwd");
    let meta = std::fs::metadata(&file).unwrap();
    std::fs::write(&file, b"root:x:0:0:root:/root:/bin/XX\n").unwrap();
    let times = std::fs::FileTimes::new().set_modified(meta.modified().unwrap());
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_times(times)
        .unwrap();
    assert_eq!(
        p.cache_problems(),
        vec![(p.chain(0), p.name.clone())],
        "the damaged cached layer, named by its chain ID"
    );
    // The blobs themselves are intact: only the cache is at fault.
    for layer in &p.image.layers {
        assert!(p.h.store.has_blob(&layer.blob.digest.parse().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_modified_in_the_layer_cache_is_repaired() {
    let p = pulled().await;
    std::fs::write(p.diff(1).join("etc/motd"), b"owned\n").unwrap();
    let client = fast_client(Config::default(), Arc::new(Anonymous));
    let repaired = verify::repair(&p.h.store, &client, &[]).await.unwrap();
    assert!(repaired.failed.is_empty(), "{:?}", repaired.failed);
    assert_eq!(repaired.repaired, vec![p.chain(1)]);
    assert!(repaired.after.is_clean(), "{:?}", repaired.after.problems);
    assert!(p.cache_problems().is_empty());
    let rootfs = p.unpacked("rootfs");
    assert_eq!(
        std::fs::read(rootfs.join("etc/motd")).unwrap(),
        b"welcome\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_added_to_the_layer_cache_is_found_by_verify() {
    let p = pulled().await;
    std::fs::write(p.diff(0).join("usr/bin/backdoor"), b"#!/bin/sh\n").unwrap();
    assert_eq!(p.cache_problems(), vec![(p.chain(0), p.name.clone())]);
    let client = fast_client(Config::default(), Arc::new(Anonymous));
    let repaired = verify::repair(&p.h.store, &client, &[]).await.unwrap();
    assert!(repaired.after.is_clean(), "{:?}", repaired.after.problems);
    let rootfs = p.unpacked("rootfs");
    assert!(!rootfs.join("usr/bin/backdoor").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_removed_or_retyped_in_the_layer_cache_is_found_by_verify() {
    let p = pulled().await;
    std::fs::remove_file(p.diff(1).join("etc/motd")).unwrap();
    assert_eq!(p.cache_problems(), vec![(p.chain(1), p.name.clone())]);

    let p = pulled().await;
    let tool = p.diff(0).join("usr/bin/tool");
    std::fs::remove_file(&tool).unwrap();
    std::os::unix::fs::symlink("/bin/sh", &tool).unwrap();
    assert_eq!(p.cache_problems(), vec![(p.chain(0), p.name.clone())]);

    let p = pulled().await;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        p.diff(0).join("usr/bin/tool"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    assert_eq!(p.cache_problems(), vec![(p.chain(0), p.name.clone())]);
}
