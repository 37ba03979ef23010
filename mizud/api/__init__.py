"""The Mizu API: request decoding, authentication, dispatch, answers."""
