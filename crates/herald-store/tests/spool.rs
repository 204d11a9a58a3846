mod common;
use common::{many, pos};
use herald_devices::Position;
use herald_store::spool::{
    EncodedBatch, FsyncPolicy, Spool, SpoolConfig, SpoolError, SpoolHandle, SpoolSeq,
};

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

fn encode(ps: &[Position]) -> EncodedBatch {
    EncodedBatch::encode(ps).unwrap()
}

fn read_all(s: &mut Spool) -> Vec<(SpoolSeq, Position)> {
    s.read_batch(1_000_000).unwrap()
}

#[test]
fn group_batches_get_consecutive_seqs_and_read_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ps = many("dev", 10);
    let groups: [&[Position]; 5] = [&ps[..3], &ps[3..4], &[], &ps[4..8], &ps[8..]];
    let expected: Vec<_> = (1..=10).map(SpoolSeq).zip(ps.iter().cloned()).collect();
    {
        let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Always)).unwrap();
        let results = s.append_group(groups.iter().map(|g| encode(g)).collect());
        let seqs: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(seqs, [3, 4, 4, 8, 10].map(SpoolSeq));
        assert_eq!(read_all(&mut s), expected);
        // Single appends continue after the group.
        assert_eq!(s.append(&[pos("dev", 99, 99)]).unwrap(), SpoolSeq(11));
    }
    let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Always)).unwrap();
    let got = read_all(&mut s);
    assert_eq!(got[..10], expected[..]);
    assert_eq!(got.len(), 11);
}

#[test]
fn group_full_is_checked_cumulatively_and_writes_nothing_of_a_refused_batch() {
    let dir = tempfile::tempdir().unwrap();
    let ps = many("dev", 20);
    let (a, b, big, small) = (&ps[..3], &ps[3..6], &ps[6..16], &ps[16..17]);
    let fitting = encode(a).len_bytes() + encode(b).len_bytes() + encode(small).len_bytes();
    let mut c = cfg(dir.path(), FsyncPolicy::Never);
    // Room for a, b and small, not for big after a and b (alone it would fit).
    c.max_bytes = encode(a).len_bytes() + encode(b).len_bytes() + encode(big).len_bytes() - 1;
    assert!(fitting <= c.max_bytes);
    {
        let mut s = Spool::open(c.clone()).unwrap();
        let results = s.append_group(vec![encode(a), encode(b), encode(big), encode(small)]);
        assert_eq!(results.len(), 4);
        assert_eq!(results[0].as_ref().unwrap(), &SpoolSeq(3));
        assert_eq!(results[1].as_ref().unwrap(), &SpoolSeq(6));
        match &results[2] {
            Err(SpoolError::Full { used, needed, max }) => {
                assert_eq!(*used, encode(a).len_bytes() + encode(b).len_bytes());
                assert_eq!(*needed, encode(big).len_bytes());
                assert_eq!(*max, c.max_bytes);
            }
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(results[3].as_ref().unwrap(), &SpoolSeq(7));
        assert_eq!(s.stats().disk_bytes, fitting);
        assert_eq!(s.stats().last_seq, 7);
    }
    let mut s = Spool::open(c).unwrap();
    let got: Vec<_> = read_all(&mut s);
    let want: Vec<_> = a.iter().chain(b).chain(small).cloned().collect();
    assert_eq!(got.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>(), want);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=7).map(SpoolSeq).collect::<Vec<_>>()
    );
    // A full spool refuses a whole group too, and nothing changes.
    let results = s.append_group(vec![encode(big), encode(big)]);
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(SpoolError::Full { .. }))));
    assert_eq!(s.stats().last_seq, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_handle_appends_are_each_spooled_once() {
    const TASKS: u32 = 200;
    const APPENDS: u32 = 50;
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), FsyncPolicy::Always);
    c.max_bytes = 64 << 20;
    c.segment_bytes = 64 << 10;
    let spool = SpoolHandle::new(Spool::open(c.clone()).unwrap());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let mut appended = Vec::new();
            for i in 0..APPENDS {
                let p = pos(&format!("d{t}"), i64::from(i), t * APPENDS + i);
                appended.push((spool.append(std::slice::from_ref(&p)).await.unwrap(), p));
            }
            appended
        }));
    }
    let mut appended = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        // One caller's appends are spooled in the order it made them.
        assert!(mine.windows(2).all(|w| w[0].0 < w[1].0));
        appended.extend(mine);
    }
    let total = u64::from(TASKS * APPENDS);
    appended.sort_by_key(|(seq, _)| *seq);
    assert_eq!(
        appended.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=total).map(SpoolSeq).collect::<Vec<_>>(),
        "seqs are unique and leave no gap"
    );
    assert_eq!(spool.append_queue(), 0);
    assert_eq!(spool.stats().last_seq, total);
    drop(spool);

    // Every record reads back exactly once, at the seq its append returned.
    let mut s = Spool::open(c).unwrap();
    assert_eq!(read_all(&mut s), appended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_commits_while_appending_consume_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    // No fsyncs: the test is about the interleaving, and thousands of cursor fsyncs take long.
    let mut c = cfg(dir.path(), FsyncPolicy::Never);
    c.max_bytes = 64 << 20;
    let spool = SpoolHandle::new(Spool::open(c.clone()).unwrap());
    let ps = many("dev", 3000);
    let appender = {
        let (spool, ps) = (spool.clone(), ps.clone());
        tokio::spawn(async move {
            for chunk in ps.chunks(3) {
                spool.append(chunk).await.unwrap();
            }
        })
    };
    // A reader in the writer's role: read, commit, repeat (segments of 4 KiB get deleted).
    let mut consumed = Vec::new();
    while consumed.len() < ps.len() {
        let batch = spool.read_batch(100).await.unwrap();
        if let Some((last, _)) = batch.last() {
            spool.commit(*last).await.unwrap();
        } else {
            tokio::task::yield_now().await;
        }
        consumed.extend(batch);
    }
    appender.await.unwrap();
    let want: Vec<_> = (1..=3000).map(SpoolSeq).zip(ps).collect();
    assert_eq!(consumed, want);
    let stats = spool.stats();
    assert_eq!((stats.committed, stats.pending_records), (3000, 0));
    drop(spool);
    let mut s = Spool::open(c).unwrap();
    assert!(read_all(&mut s).is_empty());
    assert_eq!(s.stats().segments, 0);
}

/// The segment files of a spool directory, oldest first.
fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs
}

#[test]
fn records_across_read_chunks_and_larger_than_one_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), FsyncPolicy::Never);
    c.max_bytes = 64 << 20;
    c.segment_bytes = 16 << 20;
    // ~1 MiB of small records (records straddle the reader's chunk ends), then one record of
    // 600 KB (larger than a chunk), then small ones again.
    let mut ps = many("dev", 8000);
    let mut big = pos("dev", 9_000_000, 1);
    big.attributes
        .insert("blob".into(), serde_json::json!("x".repeat(600_000)));
    ps.push(big);
    ps.extend(many("dev2", 500));
    let mut s = Spool::open(c.clone()).unwrap();
    for chunk in ps.chunks(97) {
        s.append(chunk).unwrap();
    }
    let want: Vec<_> = (1..).map(SpoolSeq).zip(ps.iter().cloned()).collect();
    assert_eq!(read_all(&mut s), want);
    // In batches with commits, as the writer reads.
    let mut got = Vec::new();
    loop {
        let batch = s.read_batch(777).unwrap();
        let Some((last, _)) = batch.last() else { break };
        s.commit(*last).unwrap();
        got.extend(batch);
    }
    assert_eq!(got, want);
}

#[test]
fn a_corrupt_record_inside_an_older_segment_skips_the_rest_of_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    let ps = many("dev", 200);
    let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Never)).unwrap();
    for chunk in ps.chunks(10) {
        s.append(chunk).unwrap();
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    let second_first: u64 = segs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Flip a byte in the payload of the first segment's third record (`open` checks only the
    // last segment, so this is found while reading).
    let mut bytes = std::fs::read(&segs[0]).unwrap();
    let mut offset = 0usize;
    for _ in 0..2 {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 8 + len;
    }
    bytes[offset + 8 + 3] ^= 0xff;
    std::fs::write(&segs[0], &bytes).unwrap();

    let got = read_all(&mut s);
    let want: Vec<_> = (1..=2)
        .chain(second_first..=200)
        .map(|seq| (SpoolSeq(seq), ps[seq as usize - 1].clone()))
        .collect();
    assert_eq!(got, want);
    // Committing past the damage works, also found by scanning (no read of that seq).
    s.commit(SpoolSeq(second_first + 5)).unwrap();
    assert_eq!(s.read_batch(1).unwrap()[0].0, SpoolSeq(second_first + 6));
    assert!(segment_files(dir.path()).len() < segs.len());
}

#[test]
fn an_undecodable_record_at_the_cursor_is_stepped_over() {
    let dir = tempfile::tempdir().unwrap();
    let ps = many("dev", 5);
    // A record that passes its CRC but is no position (unknown version), then real ones.
    let payload = [99u8, 1, 2, 3];
    let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    std::fs::write(dir.path().join(format!("{:020}.seg", 1)), &frame).unwrap();
    let mut s = Spool::open(cfg(dir.path(), FsyncPolicy::Never)).unwrap();
    assert_eq!(s.append(&ps).unwrap(), SpoolSeq(6));
    let want: Vec<_> = (2..=6).map(SpoolSeq).zip(ps).collect();
    assert_eq!(read_all(&mut s), want);
    assert_eq!(
        read_all(&mut s),
        want,
        "the same records again, without a commit"
    );
    s.commit(SpoolSeq(6)).unwrap();
    assert!(read_all(&mut s).is_empty());
    assert_eq!(s.stats().segments, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_reads_see_appends_made_during_the_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), FsyncPolicy::Never);
    c.max_bytes = 64 << 20;
    c.segment_bytes = 64 << 10;
    let spool = SpoolHandle::new(Spool::open(c).unwrap());
    let ps = many("dev", 20_000);
    let appender = {
        let (spool, ps) = (spool.clone(), ps.clone());
        tokio::spawn(async move {
            for chunk in ps.chunks(50) {
                spool.append(chunk).await.unwrap();
            }
        })
    };
    // Reads overlap appends and segment rotation; without commits each read starts over, so
    // every read must be a gap-free prefix of what was appended.
    let mut longest = 0;
    while longest < ps.len() {
        let batch = spool.read_batch(usize::MAX).await.unwrap();
        assert!(batch.len() >= longest, "a later read saw fewer records");
        for (i, (seq, p)) in batch.iter().enumerate() {
            assert_eq!((seq.0, p), (i as u64 + 1, &ps[i]));
        }
        longest = batch.len();
    }
    appender.await.unwrap();
}
