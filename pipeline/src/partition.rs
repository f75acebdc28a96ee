//! Which partition a counter key lives in: Kafka's default partitioner, the one Java producers,
//! Kafka Streams and librdkafka's `murmur2_random` (ingest's setting, `kafka.rs`) use. An
//! aggregator that is asked for a key it does not own computes the key's partition with this to
//! find the owner. It must stay the producer's function: a topic written with another
//! partitioner keeps its keys where they landed, and reads routed by this one would go to the
//! wrong owner (see README, "Scaling out").

/// The partition of `key` among `partitions`: the positive part of its murmur2 hash (Kafka's
/// seed) modulo the count, as `Utils.toPositive(Utils.murmur2(key)) % numPartitions` in Java.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    (hash % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_kafkas() {
        // Apache Kafka's own vectors (UtilsTest.testMurmur2), signed as Java prints them.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, java) in cases {
            assert_eq!(murmur2::murmur2(key, murmur2::KAFKA_SEED) as i32, java);
            let want = ((java as u32) & 0x7fff_ffff) % 12;
            assert_eq!(partition_for(key, 12), want as i32);
        }
    }
}
