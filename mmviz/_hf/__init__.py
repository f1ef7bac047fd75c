"""What capture, attribution and the methods beside them need from transformers, in one internal package.

* ``modules`` — stack names of attention modules, the configs that pick the attention implementation
  and switching them for a block;
* ``attention`` — each model's own eager attention function and the additive mask it expects;
* ``tokens`` — token tables of text, image patches and pixels from a processor;
* ``residual`` — the residual stream of any layer, and the final norm and unembedding that read it out;
* ``run`` — eval mode and frozen parameters for the length of a method (``prepared``), progress bars.

Nothing here is public API; ``mmviz.capture`` and ``mmviz.attribution`` both import from it and never
from each other's private modules.
"""
