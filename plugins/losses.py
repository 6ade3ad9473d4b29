"""The two generator objectives of the original GAN, on a ``ganflow.Step``'s logits.

The discriminator loss is -V(G, D) for both: D ascends V by minimizing it. They differ in G:
- minimax: G minimizes E[log(1 - D(G(z)))] = -E[softplus(s)], exactly the V it plays against.
  Its gradient vanishes while D confidently rejects the fakes, so it starts slowly.
- non-saturating: G minimizes E[-log D(G(z))] = E[softplus(-s)], "label the fakes as real":
  same fixed point, strong gradients early. The default.

Both report the lecture's quantities, which mean what their names say only for these losses:
d_real = mean D(x), d_fake = mean D(G(z)), value = V on the batch and jsd_estimate =
(V + 2 log 2) / 2 (the JSD that V implies if D were optimal).
"""

from keras import ops

import ganflow


class MinimaxLoss(ganflow.StepLoss):
    def d_loss(self, step):
        return ops.mean(ops.softplus(-step.real_logits)) + ops.mean(ops.softplus(step.fake_logits))

    def g_loss(self, step):
        return -ops.mean(ops.softplus(step.fake_logits))

    def metrics(self, step):
        value = ganflow.value_function(step.real_logits, step.fake_logits)
        return {
            "d_real": ops.mean(ops.sigmoid(step.real_logits)),
            "d_fake": ops.mean(ops.sigmoid(step.fake_logits)),
            "value": value,
            "jsd_estimate": (value + ganflow.LOG_4) / 2.0,
        }


class NonSaturatingLoss(MinimaxLoss):
    def g_loss(self, step):
        return ops.mean(ops.softplus(-step.fake_logits))


@ganflow.hookimpl
def ganflow_register_losses(register):
    register("minimax", MinimaxLoss(), "G minimizes E[log(1 - D(G(z)))], the lecture's V")
    register("non-saturating", NonSaturatingLoss(), "G minimizes E[-log D(G(z))]")
