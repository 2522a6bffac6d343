//! Where each service may run: generated member labels, node labels and constraints the spec
//! names, and the zone to spread over.

use super::*;

/// A member is pinned by its generated label unless the spec names node labels for it.
pub(super) fn member_placement(ctx: &mut Ctx, shared: &Shared, d: &Draft) -> Placement {
    let mut p = user_placement(ctx, d.placement.as_ref(), &d.path);
    if p.labels.is_empty() {
        p.member_label = Some(placement::member_label_key(&shared.cluster, &d.name));
    }
    p.spread = shared.zone.clone();
    p
}

/// The router and pooler run anywhere unless the spec pins them.
pub(super) fn stateless_placement(
    ctx: &mut Ctx,
    shared: &Shared,
    raw: Option<&RawPlacement>,
    path: &FieldPath,
) -> Placement {
    let mut p = user_placement(ctx, raw, path);
    p.spread = shared.zone.clone();
    p
}

pub(super) fn user_placement(
    ctx: &mut Ctx,
    raw: Option<&RawPlacement>,
    path: &FieldPath,
) -> Placement {
    let mut p = Placement::default();
    let Some(raw) = raw else { return p };
    let ppath = path.key("placement");
    for (key, Scalar(value)) in &raw.labels {
        let lpath = ppath.key("labels").key(key);
        if !placement::is_valid_label_key(key) {
            ctx.report(
                Rule::Placement,
                &lpath,
                format!(
                    "`{key}` is not a valid node label key: use letters, digits, `.`, `-` and `_`"
                ),
            );
        } else if !placement::is_valid_label_value(value) {
            ctx.report(
                Rule::Placement,
                &lpath,
                format!(
                    "`{value}` is not a usable label value: use letters, digits, `.`, `-`, `_`, \
                     `:` and `/`, no spaces"
                ),
            );
        }
        p.labels.push((key.clone(), value.clone()));
    }
    for (i, c) in raw.constraints.iter().enumerate() {
        if let Err(why) = placement::check_constraint(c) {
            ctx.report(
                Rule::Placement,
                &ppath.key("constraints").index(i),
                format!(
                    "`{c}` is not a Swarm placement constraint: {why}; write it as \
                     `node.labels.KEY == VALUE` or `node.role == manager`"
                ),
            );
        }
        p.constraints.push(c.trim().to_string());
    }
    p
}
