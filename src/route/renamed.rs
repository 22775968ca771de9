//! Columns renamed while ferry was stopped. Changes read after a restart
//! may come from before a rename, described under the columns' old names,
//! which neither table has any more. A Relation message carries no column
//! numbers, but it lists the columns alive then in their table order, and
//! the source keeps a dropped column's place among its attributes: lining
//! the two up tells a renamed column from a dropped one wherever only one
//! reading fits.

/// What became of a column of an old description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// The column is alive under this name now.
    Now(String),
    /// The column was dropped since.
    Dropped,
    /// More than one history fits: it may be another column now, or none.
    Open,
}

/// What became of each column of an old description (`described`: the
/// names a Relation message gave, in table order), given the table's
/// attributes now, in table order, `None` for a dropped one.
///
/// A described name the table still has is taken for the same column,
/// unless the names out of the table's order put it in doubt (two columns
/// swapped their names, or one was dropped and added again under its name
/// before others; see [`trusted`]). The other columns are placed between
/// the trusted ones (see [`by_name`]); where the trusted names leave them
/// no place, names say nothing, and only places do (see [`by_place`]).
pub fn current_names(described: &[&str], attributes: &[Option<&str>]) -> Vec<Fate> {
    let places: Vec<Option<usize>> =
        described.iter().map(|name| attributes.iter().position(|a| *a == Some(*name))).collect();
    let places = trusted(&places);
    match by_name(&places, attributes) {
        Ok(fates) => fates,
        Err(Unsettled::Open) => {
            places.iter().map(|place| place.map_or(Fate::Open, |at| fate(attributes[at]))).collect()
        }
        Err(Unsettled::Impossible) => by_place(described.len(), attributes),
    }
}

/// Why [`by_name`] gives no fates.
/// Ordered by strength: an impossible reading outweighs an open one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Unsettled {
    /// More than one history fits the trusted names.
    Open,
    /// None does: the trusted names cannot all be the same columns.
    Impossible,
}

/// The places (attributes now) of the described names to trust: those of
/// every longest run of names in the table's order. A name out of that
/// order, or in only some of the longest runs, may be another column's now.
fn trusted(places: &[Option<usize>]) -> Vec<Option<usize>> {
    let n = places.len();
    let earlier = |j: usize, at: usize| places[j].is_some_and(|p| p < at);
    let later = |j: usize, at: usize| places[j].is_some_and(|p| p > at);
    // The longest run in order that ends at each name, and that starts at it.
    let mut ending = vec![0; n];
    for i in 0..n {
        if let Some(at) = places[i] {
            ending[i] = 1 + (0..i).filter(|&j| earlier(j, at)).map(|j| ending[j]).max().unwrap_or(0);
        }
    }
    let mut starting = vec![0; n];
    for i in (0..n).rev() {
        if let Some(at) = places[i] {
            starting[i] = 1 + (i + 1..n).filter(|&j| later(j, at)).map(|j| starting[j]).max().unwrap_or(0);
        }
    }
    let longest = ending.iter().copied().max().unwrap_or(0);
    let on_a_longest = |i: usize| places[i].is_some() && ending[i] + starting[i] == longest + 1;
    // On every longest run: no other name on one stands at the same step.
    let on_every_longest =
        |i: usize| on_a_longest(i) && (0..n).all(|j| j == i || !on_a_longest(j) || ending[j] != ending[i]);
    (0..n).map(|i| places[i].filter(|_| on_every_longest(i))).collect()
}

/// The described columns placed between the trusted ones (`places`: their
/// attributes now, `None` for the others). Between two trusted columns,
/// every attribute alive now was alive then (it is older than the column
/// after it) and so is described, under its old name; after the last one,
/// attributes may also have been added since.
fn by_name(places: &[Option<usize>], attributes: &[Option<&str>]) -> Result<Vec<Fate>, Unsettled> {
    let mut fates = Vec::with_capacity(places.len());
    let mut unsettled = None;
    let mut settle = |gap: Result<Vec<Fate>, Unsettled>, fates: &mut Vec<Fate>| match gap {
        Ok(gap) => fates.extend(gap),
        Err(why) => unsettled = unsettled.max(Some(why)),
    };
    let (mut next, mut unmatched) = (0, 0);
    for place in places {
        let Some(at) = *place else {
            unmatched += 1;
            continue;
        };
        settle(gap(unmatched, &attributes[next..at], false), &mut fates);
        unmatched = 0;
        fates.push(fate(attributes[at]));
        next = at + 1;
    }
    settle(gap(unmatched, &attributes[next..], true), &mut fates);
    unsettled.map_or(Ok(fates), Err)
}

/// The fates of `count` described columns that lie in `gap`, the
/// attributes between two trusted columns (`last`: after the last one,
/// where columns may have been added since). Only the readings that leave
/// no choice are taken.
fn gap(count: usize, gap: &[Option<&str>], last: bool) -> Result<Vec<Fate>, Unsettled> {
    let fates = |names: &[Option<&str>]| names.iter().map(|n| fate(*n)).collect();
    let alive: Vec<Option<&str>> = gap.iter().copied().filter(Option::is_some).collect();
    if count > gap.len() || (!last && alive.len() > count) {
        // Too few places, or an attribute alive then left undescribed.
        Err(Unsettled::Impossible)
    } else if count == gap.len() {
        // Each described column has its own attribute, in order.
        Ok(fates(gap))
    } else if alive.is_empty() {
        // Only dropped attributes: the columns were dropped since (the
        // others before).
        Ok(vec![Fate::Dropped; count])
    } else if !last && alive.len() == count {
        // Every attribute alive here was described: the dropped ones went
        // before the description.
        Ok(fates(&alive))
    } else if last && gap[..count].iter().all(Option::is_some) {
        // An attribute alive before the last described one was described
        // too: the first ones, and the rest were added since.
        Ok(fates(&gap[..count]))
    } else {
        Err(Unsettled::Open)
    }
}

/// The fate of the column at an attribute (`None`: dropped).
fn fate(attribute: Option<&str>) -> Fate {
    attribute.map_or(Fate::Dropped, |name| Fate::Now(name.to_string()))
}

/// The fates of `count` described columns from their places alone. The
/// described columns are the attributes alive then, in table order: every
/// attribute alive now up to the last of them (one alive now and older
/// than a described column was alive then), and any of the dropped ones
/// among them (dropped since, or before). So the `i`th described column
/// can be the attribute at `p` when `i` counts the alive attributes before
/// `p` and at most all the dropped ones, and the rest fit after `p`. A
/// column whose every possible attribute is the same one, or only dropped
/// ones, has a fate; any other is open.
fn by_place(count: usize, attributes: &[Option<&str>]) -> Vec<Fate> {
    let (mut alive_before, mut dropped_before) = (Vec::new(), Vec::new());
    let (mut alive, mut dropped) = (0, 0);
    for attribute in attributes {
        alive_before.push(alive);
        dropped_before.push(dropped);
        if attribute.is_some() { alive += 1 } else { dropped += 1 }
    }
    (0..count)
        .map(|i| {
            let possible = (0..attributes.len()).filter(|&p| {
                (alive_before[p]..=alive_before[p] + dropped_before[p]).contains(&i)
                    && count - i <= attributes.len() - p
            });
            let mut fates = possible.map(|p| fate(attributes[p]));
            let first = fates.next().unwrap_or(Fate::Open);
            if fates.all(|f| f == first) { first } else { Fate::Open }
        })
        .collect()
}

/// What [`left_out`] adds to a column's name.
const LEFT_OUT: &str =
    " (left out of changes from before the start: renamed or dropped while ferry was stopped)";

/// The name under which a column of an old description is left out: no
/// PostgreSQL column has it (it is longer than the 63 bytes a name can
/// have), so the route takes it for one the target lacks, while the log
/// still says which column it was.
pub fn left_out(name: &str) -> String {
    format!("{name}{LEFT_OUT}")
}

/// The column's own name, if `name` is one [`left_out`] made.
pub fn was_left_out(name: &str) -> Option<&str> {
    name.strip_suffix(LEFT_OUT)
}

#[cfg(test)]
mod tests {
    use super::{Fate, current_names, fate, left_out, was_left_out};

    /// Each attribute's fate: alive under its name, or dropped.
    fn fates(list: &[Option<&str>]) -> Vec<Fate> {
        list.iter().map(|n| fate(*n)).collect()
    }

    fn now(name: &str) -> Fate {
        Fate::Now(name.to_string())
    }

    #[test]
    fn a_renamed_column_keeps_its_place() {
        let now = [Some("id"), Some("amount"), Some("note")];
        assert_eq!(current_names(&["id", "qty", "note"], &now), fates(&now));
        assert_eq!(
            current_names(&["id", "qty"], &[Some("id"), Some("amount")]),
            fates(&[Some("id"), Some("amount")])
        );
    }

    #[test]
    fn every_alive_attribute_between_known_columns_was_described() {
        let now = [Some("id"), Some("a"), None, Some("b"), None, Some("z")];
        assert_eq!(
            current_names(&["id", "x", "qty", "z"], &now),
            fates(&[Some("id"), Some("a"), Some("b"), Some("z")])
        );
    }

    #[test]
    fn a_dropped_column_leaves_its_place_empty() {
        let now = [Some("id"), None, Some("note")];
        assert_eq!(current_names(&["id", "qty", "note"], &now), fates(&now));
        assert_eq!(current_names(&["id", "qty"], &[Some("id"), None]), fates(&[Some("id"), None]));
    }

    #[test]
    fn columns_dropped_before_or_added_after_the_description_are_skipped() {
        let now = [None, Some("id"), None, Some("amount"), Some("note"), Some("added")];
        assert_eq!(
            current_names(&["id", "qty", "note"], &now),
            fates(&[Some("id"), Some("amount"), Some("note")])
        );
        // Nothing renamed: every name is still there.
        assert_eq!(
            current_names(&["id", "note"], &[Some("id"), None, Some("note"), Some("added")]),
            fates(&[Some("id"), Some("note")])
        );
        // The first alive attributes after the last known column; the
        // rest were added since.
        assert_eq!(
            current_names(&["id", "qty"], &[Some("id"), Some("amount"), None, Some("added")]),
            fates(&[Some("id"), Some("amount")])
        );
        // Dropped since, with others dropped before.
        assert_eq!(current_names(&["id", "qty"], &[Some("id"), None, None]), fates(&[Some("id"), None]));
    }

    #[test]
    fn an_open_history_leaves_only_the_unknown_names_open() {
        // Renamed to `amount`, an older column dropped before; or `qty`
        // dropped and `amount` added since.
        assert_eq!(
            current_names(&["id", "qty"], &[Some("id"), None, Some("amount")]),
            vec![now("id"), Fate::Open]
        );
        // `x` renamed to `a` and `qty` dropped since, or `x` dropped since
        // and `qty` renamed to `a`.
        assert_eq!(
            current_names(&["id", "x", "qty", "z"], &[Some("id"), None, Some("a"), None, Some("z")]),
            vec![now("id"), Fate::Open, Fate::Open, now("z")]
        );
    }

    #[test]
    fn names_out_of_table_order_go_by_place() {
        // Swapped, nothing ever dropped: only one reading.
        assert_eq!(current_names(&["b", "a"], &[Some("a"), Some("b")]), vec![now("a"), now("b")]);
        assert_eq!(
            current_names(
                &["id", "name", "qty", "label"],
                &[Some("id"), Some("label"), Some("qty"), Some("name")]
            ),
            vec![now("id"), now("label"), now("qty"), now("name")]
        );
        // `name` dropped and added again: it is dropped since, or `qty`
        // was renamed to it with `name` renamed to `qty` and a column
        // dropped before. Only `id` is certain.
        assert_eq!(
            current_names(&["id", "name", "qty"], &[Some("id"), None, Some("qty"), Some("name")]),
            vec![now("id"), Fate::Open, Fate::Open]
        );
        // Dropped columns before and after the swapped ones: each
        // described column has only one place.
        assert_eq!(
            current_names(&["id", "a", "b"], &[Some("id"), Some("b"), Some("a"), None]),
            vec![now("id"), now("b"), now("a")]
        );
        // `c` is in order with either of the swapped ones: trusted.
        assert_eq!(
            current_names(&["b", "a", "c"], &[Some("a"), Some("b"), None, None, Some("c")]),
            vec![now("a"), now("b"), now("c")]
        );
        // `id` is in order with either of the others, behind an old
        // dropped column: trusted, while `a` (dropped and added again) and
        // `b` are open.
        assert_eq!(
            current_names(&["id", "a", "b"], &[None, Some("id"), None, Some("b"), Some("a")]),
            vec![now("id"), Fate::Open, Fate::Open]
        );
    }

    #[test]
    fn trusted_names_that_leave_another_column_no_place_go_by_place() {
        // `name` dropped and added again, `qty` dropped: nothing is left
        // for `qty` after `name`.
        assert_eq!(
            current_names(&["id", "name", "qty"], &[Some("id"), None, None, Some("name")]),
            vec![now("id"), Fate::Dropped, Fate::Open]
        );
        // `name` dropped and added again, `qty` renamed to `amount`:
        // `amount`, older than `name` now, would be undescribed.
        assert_eq!(
            current_names(&["id", "name", "qty"], &[Some("id"), None, Some("amount"), Some("name")]),
            vec![now("id"), Fate::Open, Fate::Open]
        );
    }

    #[test]
    fn a_left_out_name_is_no_column_name() {
        assert!(left_out("a").len() > 63, "PostgreSQL names have at most 63 bytes");
        assert_eq!(was_left_out(&left_out("qty")), Some("qty"));
        assert_eq!(was_left_out("qty"), None);
    }
}
