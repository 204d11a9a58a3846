mod common;
use common::{many, pos};
use herald_store::spool::{FsyncPolicy, Spool, SpoolConfig, SpoolError, SpoolSeq};

fn cfg(dir: &std::path::Path, fsync: FsyncPolicy) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_path_buf(),
        max_bytes: 1 << 20,
        segment_bytes: 4096,
        fsync,
    }
}

#[test]
fn append_read_commit_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let ps = many("dev", 200);
    {
        let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Always)).unwrap();
        let mut last = SpoolSeq(0);
        for chunk in ps.chunks(10) {
            last = s.append(chunk).unwrap();
        }
        assert_eq!(last, SpoolSeq(200));
        assert!(s.stats().segments > 1, "segments rotate");
        let b = s.read_batch(50).unwrap();
        assert_eq!(b.len(), 50);
        assert_eq!(b[0], (SpoolSeq(1), ps[0].clone()));
        // Without commit the same records come back.
        assert_eq!(s.read_batch(50).unwrap(), b);
        s.commit(SpoolSeq(50)).unwrap();
        let b2 = s.read_batch(10).unwrap();
        assert_eq!(b2[0].0, SpoolSeq(51));
        assert!(matches!(
            s.commit(SpoolSeq(201)),
            Err(SpoolError::CommitBeyondEnd { .. })
        ));
    }
    let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Always)).unwrap();
    let b = s.read_batch(1000).unwrap();
    assert_eq!(b.len(), 150);
    assert_eq!(b[0], (SpoolSeq(51), ps[50].clone()));
    // Commit without a preceding read of that seq (scan path).
    s.commit(SpoolSeq(120)).unwrap();
    assert_eq!(s.read_batch(1).unwrap()[0].0, SpoolSeq(121));
    s.commit(SpoolSeq(200)).unwrap();
    assert_eq!(s.stats().segments, 0, "consumed segments deleted");
    assert_eq!(s.stats().disk_bytes, 0);
    assert!(s.read_batch(10).unwrap().is_empty());
    // Sequence numbers continue after everything was consumed, also across reopen.
    assert_eq!(s.append(&[pos("dev", 5, 5)]).unwrap(), SpoolSeq(201));
    drop(s);
    let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Always)).unwrap();
    assert_eq!(s.read_batch(10).unwrap()[0].0, SpoolSeq(201));
    assert_eq!(s.append(&[pos("dev", 6, 6)]).unwrap(), SpoolSeq(202));
}

#[test]
fn torn_tail_is_truncated_and_complete_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    let ps = many("dev", 30);
    {
        let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Never)).unwrap();
        for p in &ps {
            s.append(std::slice::from_ref(p)).unwrap();
        }
    }
    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    // Cut the last record in half.
    let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);
    let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Never)).unwrap();
    let got: Vec<_> = s
        .read_batch(100)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(got, ps[..29].to_vec());
    // New appends continue cleanly after the truncated tail.
    assert_eq!(s.append(&[ps[29].clone()]).unwrap(), SpoolSeq(30));
    drop(s);
    let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Never)).unwrap();
    let got: Vec<_> = s
        .read_batch(100)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(got, ps);

    // Garbage appended at the tail (a torn header) is dropped too.
    drop(s);
    let segs_now: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    let last = segs_now.iter().max().unwrap();
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    f.write_all(&[0xff, 0xff, 0x00]).unwrap();
    drop(f);
    let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Never)).unwrap();
    assert_eq!(s.read_batch(100).unwrap().len(), 30);
}

#[test]
fn full_when_over_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), FsyncPolicy::Never);
    c.max_bytes = 2000;
    let mut s = Spool::open(c).unwrap();
    let mut accepted = 0;
    let err = loop {
        match s.append(&[pos("dev", accepted, 1)]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1000);
    };
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert!(s.stats().disk_bytes <= 2000);
    // Draining frees space.
    let b = s.read_batch(1000).unwrap();
    assert_eq!(b.len() as i64, accepted);
    s.commit(b.last().unwrap().0).unwrap();
    s.append(&[pos("dev", 0, 1)]).unwrap();
}

#[test]
fn fsync_policies_keep_correctness() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::EveryMillis(0),
        FsyncPolicy::EveryMillis(50),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ps = many("dev", 100);
        {
            let mut s = Spool::open(cfg(dir.path(), policy)).unwrap();
            for c in ps.chunks(7) {
                s.append(c).unwrap();
            }
            s.sync_if_due().unwrap();
            s.read_batch(40).unwrap();
            s.commit(SpoolSeq(40)).unwrap();
        }
        let mut s = Spool::open(cfg(dir.path(), policy)).unwrap();
        let got: Vec<_> = s
            .read_batch(1000)
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(got, ps[40..].to_vec(), "{policy:?}");
    }
}
