#!/usr/bin/env python3
"""replay.py's judge: a replay equal to the served text, one that parts at a near tie, one that
parts where the served token is far below the replay's choice, and one whose served token is not
among the alternatives. Run by ctest (test_adaptive_replay) or directly."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replay import judge  # noqa: E402


def choice(tokens, chosen, tops):
    """A completions choice with legacy logprobs over tokens (text offsets in bytes)."""
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t.encode())
    return {"text": "".join(tokens), "logprobs": {
        "tokens": tokens, "token_logprobs": chosen, "top_logprobs": tops, "text_offset": offsets}}


class Judge(unittest.TestCase):
    def test_equal(self):
        got = choice([" Once", " upon"], [-0.1, -0.2], [{" Once": -0.1}, {" upon": -0.2}])
        self.assertEqual(judge(" Once upon", got, 0.1), ("equal", None, None))

    def test_near_tie(self):
        # served " a time", replayed " the": at token 1 " a" was 0.04 below " the"
        got = choice([" upon", " the"], [-0.2, -0.70],
                     [{" upon": -0.2}, {" the": -0.70, " a": -0.74, " an": -3.0}])
        verdict, gap, at = judge(" upon a time", got, 0.1)
        self.assertEqual((verdict, at), ("near tie", 6))
        self.assertAlmostEqual(gap, 0.04)

    def test_far_below(self):
        got = choice([" upon", " the"], [-0.2, -0.1],
                     [{" upon": -0.2}, {" the": -0.1, " a": -2.5}])
        verdict, gap, _ = judge(" upon a time", got, 0.1)
        self.assertEqual(verdict, "differs")
        self.assertAlmostEqual(gap, 2.4)

    def test_nearest_candidate_decides(self):
        # " a" and " a time" both start the served rest; the nearer one decides
        got = choice([" upon", " the"], [-0.2, -0.5],
                     [{" upon": -0.2}, {" the": -0.5, " a": -3.0, " a time": -0.55}])
        verdict, gap, _ = judge(" upon a time", got, 0.1)
        self.assertEqual(verdict, "near tie")
        self.assertAlmostEqual(gap, 0.05)

    def test_unresolved(self):
        got = choice([" upon", " the"], [-0.2, -0.1], [{" upon": -0.2}, {" the": -0.1}])
        self.assertEqual(judge(" upon a time", got, 0.1), ("unresolved", None, 6))

    def test_multibyte_offsets(self):
        # offsets count bytes: "é" is two, so the difference is found at the right token
        got = choice(["é", " b"], [-0.1, -0.3], [{"é": -0.1}, {" b": -0.3, " c": -0.32}])
        verdict, gap, at = judge("é c", got, 0.1)
        self.assertEqual((verdict, at), ("near tie", 3))
        self.assertAlmostEqual(gap, 0.02)

    def test_served_longer(self):
        # the replay stopped early (a stop or EOS) where the served answer went on: no token to
        # judge at the end
        got = choice([" upon"], [-0.2], [{" upon": -0.2}])
        self.assertEqual(judge(" upon a", got, 0.1)[0], "unresolved")


if __name__ == "__main__":
    unittest.main()
