//! The topic's id (KIP-516), read with the DescribeTopics admin request through librdkafka's C
//! API: rdkafka 0.39 does not wrap DescribeTopics, and the topic id is the one fact that tells a
//! recreated topic from the old one once the new log has grown past the stored offsets. This is
//! the only unsafe code outside the test kit; it owns every C object it creates and destroys
//! each one on every path.
//!
//! What must not live here: judging the id (that is [`crate::topic::judge_topic_id`], pure and
//! tested without a broker).

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::bindings as rd;

/// The all-zero id: what a broker without topic ids (before Kafka 2.8, or one that does not
/// keep them) answers.
const ZERO_ID: &str = "AAAAAAAAAAAAAAAAAAAAAA";

/// Destroys a librdkafka object when dropped.
struct Owned<T> {
    ptr: *mut T,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: `ptr` was returned by the librdkafka constructor matching `destroy`, and
            // is destroyed exactly once, here.
            unsafe { (self.destroy)(self.ptr) }
        }
    }
}

/// Reads `topic`'s id (base64, as Kafka's tools print it) through the client `rk`; `None` when
/// the broker gives none. Blocks up to `timeout`.
pub(crate) fn describe(
    rk: *mut rd::rd_kafka_t,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<String>> {
    let name = CString::new(topic).context("a topic name cannot hold a NUL byte")?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: every pointer passed below is either `rk` (a live client the caller owns for the
    // duration of this call) or an object created here and destroyed by its `Owned` guard after
    // its last use; the result event owns the descriptions read from it, and they are read
    // before the event is dropped.
    unsafe {
        let mut names = [name.as_ptr()];
        let topics = Owned {
            ptr: rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), 1),
            destroy: rd::rd_kafka_TopicCollection_destroy,
        };
        let options = Owned {
            ptr: rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            destroy: rd::rd_kafka_AdminOptions_destroy,
        };
        let mut errstr = [0 as std::ffi::c_char; 256];
        if rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        ) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            bail!(
                "cannot set the DescribeTopics timeout: {}",
                CStr::from_ptr(errstr.as_ptr()).to_string_lossy()
            );
        }
        let queue = Owned {
            ptr: rd::rd_kafka_queue_new(rk),
            destroy: rd::rd_kafka_queue_destroy,
        };
        rd::rd_kafka_DescribeTopics(rk, topics.ptr, options.ptr, queue.ptr);
        // Leave the request its own timeout to fail in before giving up on the queue.
        let event = Owned {
            ptr: rd::rd_kafka_queue_poll(queue.ptr, timeout_ms.saturating_add(5_000)),
            destroy: rd::rd_kafka_event_destroy,
        };
        if event.ptr.is_null() {
            bail!("no answer to DescribeTopics for topic {topic} within {timeout:?}");
        }
        if rd::rd_kafka_event_error(event.ptr)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            bail!(
                "DescribeTopics for topic {topic} failed: {}",
                CStr::from_ptr(rd::rd_kafka_event_error_string(event.ptr)).to_string_lossy()
            );
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.ptr);
        if result.is_null() {
            bail!("DescribeTopics for topic {topic} returned an event of another kind");
        }
        let mut count = 0usize;
        let descs = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if descs.is_null() || count != 1 {
            bail!("DescribeTopics for topic {topic} returned {count} topics, not 1");
        }
        let desc = *descs;
        let error = rd::rd_kafka_TopicDescription_error(desc);
        if !error.is_null()
            && rd::rd_kafka_error_code(error) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            bail!(
                "DescribeTopics for topic {topic}: {}",
                CStr::from_ptr(rd::rd_kafka_error_string(error)).to_string_lossy()
            );
        }
        let uuid = rd::rd_kafka_TopicDescription_topic_id(desc);
        if uuid.is_null() {
            return Ok(None);
        }
        let id = CStr::from_ptr(rd::rd_kafka_Uuid_base64str(uuid))
            .to_string_lossy()
            .into_owned();
        Ok((id != ZERO_ID && !id.is_empty()).then_some(id))
    }
}
