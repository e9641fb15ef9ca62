//! Bounded text for places with size limits (Event notes, status messages).

/// At most `max` characters of `text`, with `…` when cut; never splits a character.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// A duration as people write it, to the nearest second: `5m`, `1h 30m`, `12s`.
pub(crate) fn human_duration(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs() + u64::from(duration.subsec_millis() >= 500);
    jiff::SignedDuration::try_from(std::time::Duration::from_secs(seconds))
        .map(|d| format!("{d:#}"))
        .unwrap_or_else(|_| format!("{}s", duration.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_duration(std::time::Duration::from_secs(300)), "5m");
        assert_eq!(human_duration(std::time::Duration::from_secs(5400)), "1h 30m");
        // Never "17s 511ms 766µs 176ns": a denial says when, not how precisely.
        assert_eq!(human_duration(std::time::Duration::from_nanos(17_511_766_176)), "18s");
        assert_eq!(human_duration(std::time::Duration::from_millis(400)), "0s");
    }

    #[test]
    fn truncates_on_character_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("äöüß", 2), "äö…");
    }
}
