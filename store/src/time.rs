//! Calendar helpers: Unix milliseconds to and from the civil (proleptic Gregorian, UTC)
//! calendar, without a time-zone database.
//!
//! Invariant: the store never reads the system clock itself; the caller passes `now`
//! (see `replica::Clock`). These functions are pure.

use crate::error::{Error, Result};

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

const MS_PER_DAY: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// The first year a date in Carnet may fall in: no one alive was born before it.
pub const FIRST_YEAR: i64 = 1870;
/// The last year a date in Carnet may fall in: no care, grant or record is dated after it.
pub const LAST_YEAR: i64 = 2199;

/// Refuses an instant outside the years `FIRST_YEAR` to `LAST_YEAR` (a typo, a clock gone
/// wrong or a value crafted to overflow what is computed from it); `what` names it.
pub fn check_plausible(ms: Millis, what: &str) -> Result<Millis> {
    let first = days_from_civil(FIRST_YEAR, 1, 1) * MS_PER_DAY;
    let after = days_from_civil(LAST_YEAR + 1, 1, 1) * MS_PER_DAY;
    if (first..after).contains(&ms) {
        Ok(ms)
    } else {
        Err(Error::invalid(format!(
            "{what} is out of range: Carnet takes dates from {FIRST_YEAR} to {LAST_YEAR}"
        )))
    }
}

/// Parses `YYYY-MM-DD` and returns the Unix milliseconds of its midnight UTC; the year is four
/// digits from `FIRST_YEAR` to `LAST_YEAR`.
pub fn parse_date(text: &str) -> Result<Millis> {
    check_plausible(parse_calendar_date(text)?, &format!("the date '{text}'"))
}

/// Parses `YYYY-MM-DD`, any four-digit year (a certificate's validity may end in 9999), to the
/// Unix milliseconds of its midnight UTC. Dates a person gives go through `parse_date`.
pub fn parse_calendar_date(text: &str) -> Result<Millis> {
    let err = || Error::invalid(format!("invalid date '{text}': expected YYYY-MM-DD"));
    let parts: Vec<&str> = text.trim().split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(err());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(err());
    }
    if ![y, m, d]
        .iter()
        .all(|p| p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(err());
    }
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| err())?,
        m.parse().map_err(|_| err())?,
        d.parse().map_err(|_| err())?,
    );
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return Err(err());
    }
    Ok(days_from_civil(y, m, d) * MS_PER_DAY)
}

/// The years a person born on `birth_date` (`YYYY-MM-DD`) has completed at `now`, on the UTC
/// calendar: a year is completed at the start of the birthday. Someone born on 29 February
/// completes a year on 1 March when the year has no 29 February (the birthday has not come
/// while 28 February lasts). Negative when `now` is before the birth year's birthday.
pub fn years_completed(birth_date: &str, now: Millis) -> Result<i64> {
    let (by, bm, bd) = civil_from_days(parse_date(birth_date)?.div_euclid(MS_PER_DAY));
    let (y, m, d) = civil_from_days(now.div_euclid(MS_PER_DAY));
    Ok(y - by - i64::from((m, d) < (bm, bd)))
}

/// The same instant `years` calendar years after `ms` (UTC); a 29 February with no 29 February
/// in the target year becomes 1 March (as `years_completed` counts a birthday).
pub fn add_years(ms: Millis, years: i64) -> Millis {
    let day = ms.div_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(day);
    let y = y + years;
    let (m, d) = if d > days_in_month(y, m) {
        (m + 1, 1)
    } else {
        (m, d)
    };
    days_from_civil(y, m, d) * MS_PER_DAY + ms.rem_euclid(MS_PER_DAY)
}

/// Parses an RFC 3339 time, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, strictly (a `T` or
/// `t` between date and time, seconds required, an offset required; leap seconds refused).
/// Fractions finer than a millisecond are truncated.
pub fn parse_rfc3339(text: &str) -> Result<Millis> {
    let err = || {
        Error::invalid(format!(
            "invalid time '{text}': expected RFC 3339, e.g. 2026-12-31T18:00:00Z or 2026-12-31T19:00:00+01:00"
        ))
    };
    let two_digits = |t: &str, max: i64| -> Result<i64> {
        match t.parse::<i64>() {
            Ok(v) if t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit()) && v <= max => Ok(v),
            _ => Err(err()),
        }
    };
    let text = text.trim();
    let (date, rest) = text
        .split_once(['T', 't'])
        .filter(|(d, _)| d.len() == 10)
        .ok_or_else(err)?;
    let day = parse_calendar_date(date).map_err(|_| err())?;
    let (clock, offset_ms) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = rest.rfind(['+', '-']).ok_or_else(err)?;
        let (clock, offset) = rest.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':').ok_or_else(err)?;
        (
            clock,
            sign * (two_digits(h, 23)? * 3_600_000 + two_digits(m, 59)? * 60_000),
        )
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, f)) if !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) => (hms, f),
        Some(_) => return Err(err()),
        None => (clock, ""),
    };
    let parts: Vec<&str> = hms.split(':').collect();
    let [h, m, sec] = parts.as_slice() else {
        return Err(err());
    };
    let millis: i64 = format!("{fraction:0<3}")[..3].parse().map_err(|_| err())?;
    check_plausible(
        day + two_digits(h, 23)? * 3_600_000
            + two_digits(m, 59)? * 60_000
            + two_digits(sec, 59)? * 1000
            + millis
            - offset_ms,
        &format!("the time '{text}'"),
    )
}

/// Formats as `YYYY-MM-DD`.
pub fn format_date(ms: Millis) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Formats as RFC 3339 UTC with milliseconds, e.g. `2026-11-23T05:18:54.123Z`.
pub fn format_rfc3339(ms: Millis) -> String {
    let rem = ms.rem_euclid(MS_PER_DAY);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{}T{h:02}:{mi:02}:{s:02}.{milli:03}Z", format_date(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for text in [
            "1970-01-01",
            "2000-02-29",
            "1984-05-07",
            "2026-11-23",
            "1899-12-31",
        ] {
            let ms = parse_date(text).expect("valid date");
            assert_eq!(format_date(ms), text);
        }
        assert_eq!(parse_date("1970-01-02").ok(), Some(MS_PER_DAY));
        assert_eq!(
            format_rfc3339(1_000 * 86_400 + 3_723_004),
            "1970-01-02T01:02:03.004Z"
        );
    }

    fn at(date: &str, hms_ms: i64) -> Millis {
        parse_date(date).expect("valid date") + hms_ms
    }

    #[test]
    fn years_complete_at_the_start_of_the_birthday() {
        let last_ms = MS_PER_DAY - 1;
        for (birth, now, years) in [
            ("2008-06-15", at("2026-06-14", last_ms), 17),
            ("2008-06-15", at("2026-06-15", 0), 18),
            ("2008-06-15", at("2026-06-16", 0), 18),
            ("2008-12-31", at("2026-12-31", last_ms), 18),
            ("2008-12-31", at("2027-01-01", 0), 18),
            ("2009-01-01", at("2026-12-31", last_ms), 17),
            // 29 February: 28 February is not yet the birthday of a common year, 1 March is.
            ("2008-02-29", at("2026-02-28", last_ms), 17),
            ("2008-02-29", at("2026-03-01", 0), 18),
            // In a leap year the birthday is the day itself.
            ("2012-02-29", at("2030-02-28", last_ms), 17),
            ("2012-02-29", at("2030-03-01", 0), 18),
            ("2012-02-29", at("2032-02-28", last_ms), 19),
            ("2012-02-29", at("2032-02-29", 0), 20),
            // 28 February and 1 March births are not moved by a leap year.
            ("2008-02-28", at("2026-02-28", 0), 18),
            ("2008-03-01", at("2026-02-28", last_ms), 17),
            ("2008-03-01", at("2026-03-01", 0), 18),
            // Before the epoch, and before the birth.
            ("1950-07-01", at("1968-07-01", 0), 18),
            ("2026-05-01", at("2026-04-30", 0), -1),
        ] {
            assert_eq!(years_completed(birth, now).ok(), Some(years), "{birth}");
        }
        assert!(years_completed("2008-02-30", 0).is_err());
    }

    #[test]
    fn years_are_added_on_the_calendar() {
        for (from, years, to) in [
            (
                at("2026-12-03", 45_296_007),
                10,
                at("2036-12-03", 45_296_007),
            ),
            (at("2028-02-29", 3_600_000), 10, at("2038-03-01", 3_600_000)),
            (at("2028-02-29", 0), 4, at("2032-02-29", 0)),
            (at("1965-07-01", 0), 10, at("1975-07-01", 0)),
        ] {
            assert_eq!(format_rfc3339(add_years(from, years)), format_rfc3339(to));
        }
    }

    #[test]
    fn rfc3339_times_parse_strictly() {
        let day = parse_date("2026-12-31").expect("date");
        assert_eq!(parse_rfc3339("2026-12-31T00:00:00Z").ok(), Some(day));
        assert_eq!(
            parse_rfc3339("2026-12-31T19:30:05.25+01:00").ok(),
            Some(day + 18 * 3_600_000 + 30 * 60_000 + 5_250)
        );
        assert_eq!(parse_rfc3339("2026-12-30T23:00:00-01:00").ok(), Some(day));
        let t = parse_rfc3339("2026-11-23T05:18:54.123Z").expect("time");
        assert_eq!(format_rfc3339(t), "2026-11-23T05:18:54.123Z");
        for text in [
            "2026-12-31",
            "2026-12-31T10:00Z",
            "2026-12-31T10:00:00",
            "2026-12-31 10:00:00Z",
            "2026-12-31T24:00:00Z",
            "2026-12-31T10:60:00Z",
            "2026-12-31T10:00:60Z",
            "2026-12-31T10:00:00.Z",
            "2026-12-31T10:00:00+1:00",
            "2026-12-31T10:00:00+01:60",
            "2026-02-30T10:00:00Z",
            "2026-12-31T+1:00:00Z",
            "x",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text}");
        }
    }

    #[test]
    fn bad_dates_are_refused() {
        for text in [
            "2001-02-29",
            "2026-13-01",
            "2026-00-10",
            "26-01-01",
            "2026/01/01",
            "x",
            "+026-01-01",
            "0000-01-01",
            "1869-12-31",
            "2200-01-01",
            "9999-12-31",
        ] {
            assert!(parse_date(text).is_err(), "{text}");
        }
        assert!(parse_date("1870-01-01").is_ok() && parse_date("2199-12-31").is_ok());
        assert!(parse_rfc3339("2199-12-31T23:30:00-01:00").is_err());
        assert!(check_plausible(i64::MAX, "an end").is_err());
        assert!(check_plausible(i64::MIN, "a start").is_err());
    }
}
