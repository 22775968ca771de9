//! Columns renamed while ferry was stopped. Changes read after a restart
//! may come from before a rename, described under the columns' old names,
//! which neither table has any more. A Relation message carries no column
//! numbers, but it lists the columns alive then in their table order, and
//! the source keeps a dropped column's place among its attributes: lining
//! the two up tells a renamed column from a dropped one wherever only one
//! reading fits.

/// What became of each column of an old description (`described`: the
/// names a Relation message gave, in table order), given the table's
/// attributes now, in table order, `None` for a dropped one: its name now,
/// or `None` when it was dropped since. `None` overall when more than one
/// history fits (a column dropped before the description could stand where
/// another was renamed, or one added since where one was dropped).
///
/// A described name the table still has is taken for the same column.
/// Between two such columns, every attribute alive now was alive then (it
/// is older than the column after it) and so is described, under its old
/// name; after the last one, attributes may also have been added since.
pub fn current_names(described: &[&str], attributes: &[Option<&str>]) -> Option<Vec<Option<String>>> {
    let mut names = Vec::with_capacity(described.len());
    let mut next = 0;
    let mut unmatched = 0;
    for name in described {
        let Some(at) = attributes.iter().position(|a| *a == Some(*name)) else {
            unmatched += 1;
            continue;
        };
        if at < next {
            return None;
        }
        names.extend(gap(unmatched, &attributes[next..at], false)?);
        unmatched = 0;
        names.push(Some(name.to_string()));
        next = at + 1;
    }
    names.extend(gap(unmatched, &attributes[next..], true)?);
    Some(names)
}

/// The current names of `count` described columns that lie in `gap`, the
/// attributes between two columns known by name (`last`: after the last
/// one, where columns may have been added since). Only the readings that
/// leave no choice are taken.
fn gap(count: usize, gap: &[Option<&str>], last: bool) -> Option<Vec<Option<String>>> {
    let owned = |names: &[Option<&str>]| names.iter().map(|n| n.map(str::to_string)).collect();
    let alive: Vec<Option<&str>> = gap.iter().copied().filter(Option::is_some).collect();
    if count == gap.len() {
        // Each described column has its own attribute, in order.
        Some(owned(gap))
    } else if alive.is_empty() {
        // Only dropped attributes: the columns were dropped since (the
        // others before).
        Some(vec![None; count])
    } else if !last && alive.len() == count {
        // Every attribute alive here was described: the dropped ones went
        // before the description.
        Some(owned(&alive))
    } else if last && gap.len() > count && gap[..count].iter().all(Option::is_some) {
        // An attribute alive before the last described one was described
        // too: the first ones, and the rest were added since.
        Some(owned(&gap[..count]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::current_names;

    fn names(list: &[Option<&str>]) -> Option<Vec<Option<String>>> {
        Some(list.iter().map(|n| n.map(str::to_string)).collect())
    }

    #[test]
    fn a_renamed_column_keeps_its_place() {
        let now = [Some("id"), Some("amount"), Some("note")];
        assert_eq!(current_names(&["id", "qty", "note"], &now), names(&now));
        assert_eq!(
            current_names(&["id", "qty"], &[Some("id"), Some("amount")]),
            names(&[Some("id"), Some("amount")])
        );
    }

    #[test]
    fn every_alive_attribute_between_known_columns_was_described() {
        let now = [Some("id"), Some("a"), None, Some("b"), None, Some("z")];
        assert_eq!(
            current_names(&["id", "x", "qty", "z"], &now),
            names(&[Some("id"), Some("a"), Some("b"), Some("z")])
        );
    }

    #[test]
    fn a_dropped_column_leaves_its_place_empty() {
        let now = [Some("id"), None, Some("note")];
        assert_eq!(current_names(&["id", "qty", "note"], &now), names(&now));
        assert_eq!(current_names(&["id", "qty"], &[Some("id"), None]), names(&[Some("id"), None]));
    }

    #[test]
    fn columns_dropped_before_or_added_after_the_description_are_skipped() {
        let now = [None, Some("id"), None, Some("amount"), Some("note"), Some("added")];
        assert_eq!(
            current_names(&["id", "qty", "note"], &now),
            names(&[Some("id"), Some("amount"), Some("note")])
        );
        // Nothing renamed: every name is still there.
        assert_eq!(
            current_names(&["id", "note"], &[Some("id"), None, Some("note"), Some("added")]),
            names(&[Some("id"), Some("note")])
        );
        // The first alive attributes after the last known column; the
        // rest were added since.
        assert_eq!(
            current_names(&["id", "qty"], &[Some("id"), Some("amount"), None, Some("added")]),
            names(&[Some("id"), Some("amount")])
        );
        // Dropped since, with others dropped before.
        assert_eq!(current_names(&["id", "qty"], &[Some("id"), None, None]), names(&[Some("id"), None]));
    }

    #[test]
    fn an_open_history_is_no_answer() {
        // Renamed to `amount`, an older column dropped before; or `qty`
        // dropped and `amount` added since.
        assert_eq!(current_names(&["id", "qty"], &[Some("id"), None, Some("amount")]), None);
        // `x` renamed to `a` and `qty` dropped since, or `x` dropped since
        // and `qty` renamed to `a`.
        assert_eq!(
            current_names(&["id", "x", "qty", "z"], &[Some("id"), None, Some("a"), None, Some("z")]),
            None
        );
        // Columns in another order than described.
        assert_eq!(current_names(&["b", "a"], &[Some("a"), Some("b")]), None);
    }
}
