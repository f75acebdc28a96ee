//! End-to-end tests of Tally live in `tests/`: each starts its own Apache Kafka broker and Tally's
//! binaries as processes, drives them over HTTP, injects faults and compares the sums with the
//! ground truth (what was acknowledged). This library is empty on purpose.
