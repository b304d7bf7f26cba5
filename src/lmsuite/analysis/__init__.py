"""The case studies: memorization, the effect of term frequency, where training saw a text,
and the pronoun intervention."""
