"""Shared pytest setup: strict rank promotion and parsed absl flags."""
from absl import flags
import jax
import pytest

jax.config.update('jax_numpy_rank_promotion', 'raise')


@pytest.fixture(autouse=True, scope='session')
def _absl_flags_parsed():
  """Lets code that reads absl flags run under pytest without app.run()."""
  flags.FLAGS.mark_as_parsed()
  yield
