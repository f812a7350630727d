"""What the variational families share: a loss and eval metrics from per-example ELBO terms."""


def nelbo_objective(per_example_terms):
    """Returns `(train_loss, eval_metrics)` for a family whose `per_example_terms(model, batch,
    key)` gives [B] arrays in nats, including `nelbo_nats`, the loss minimised (batch mean)."""

    def train_loss(config, model, batch, key, step):
        del config, step  # No settings, no schedules.
        terms = {name: value.mean() for name, value in per_example_terms(model, batch, key).items()}
        return terms["nelbo_nats"], terms

    def eval_metrics(config, model, batch, key, step):
        del config, step
        return per_example_terms(model, batch, key)

    return train_loss, eval_metrics
