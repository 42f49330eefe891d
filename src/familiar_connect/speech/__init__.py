"""Speech: audio plumbing, speech-to-text and text-to-speech providers for voice conversations."""
