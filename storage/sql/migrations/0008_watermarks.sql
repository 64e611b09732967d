-- How far the consumer group has applied each input partition: its watermark.
-- Written by the partition's owner in the transaction of a batch it applied
-- (or, when the partition is idle, alone, once nothing is in flight), so it
-- never runs ahead of the committed state; every column only grows.
--
-- A durable timer with deadline D fires only when every partition of the
-- input topics has a watermark of at least D: a record timestamp of at least
-- D applied, or a fetch at a time of at least D that showed nothing left to
-- apply. A partition whose watermark has not moved for
-- timer_watermark_max_lag_seconds stops counting (its owner is gone or stuck).
-- No index but the key: a few rows per input partition.
CREATE TABLE input_watermarks (
    topic          text NOT NULL,
    partition      integer NOT NULL,
    -- Every record of the partition before this offset is applied.
    applied_offset bigint NOT NULL,
    -- The Kafka timestamp of the latest record applied.
    record_time    timestamptz,
    -- When a fetch last showed no record beyond applied_offset (lag 0).
    caught_up_at   timestamptz,
    -- When any of the above last moved, on the writer's clock.
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (topic, partition)
);
