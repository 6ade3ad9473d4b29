"""The two generator objectives of the original GAN, on logits.

The discriminator loss is -V(G, D) for both: D ascends V by minimizing it. They differ in G:
- minimax: G minimizes E[log(1 - D(G(z)))] = -E[softplus(s)], exactly the V it plays against.
  Its gradient vanishes while D confidently rejects the fakes, so it starts slowly.
- non-saturating: G minimizes E[-log D(G(z))] = E[softplus(-s)], "label the fakes as real":
  same fixed point, strong gradients early. The default.
"""

from keras import ops

import ganflow


class MinimaxLoss(ganflow.Loss):
    def discriminator_loss(self, real_logits, fake_logits):
        return ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))

    def generator_loss(self, fake_logits):
        return -ops.mean(ops.softplus(fake_logits))


class NonSaturatingLoss(MinimaxLoss):
    def generator_loss(self, fake_logits):
        return ops.mean(ops.softplus(-fake_logits))


@ganflow.hookimpl
def ganflow_register_losses(register):
    register("minimax", MinimaxLoss(), "G minimizes E[log(1 - D(G(z)))], the lecture's V")
    register("non-saturating", NonSaturatingLoss(), "G minimizes E[-log D(G(z))]")
