import numpy as np
import pytest

from tsinfer.infer.reader import NO_LABEL, InputError, iter_chunks, read_all


def write(tmp_path, content: bytes, name="in.tsv"):
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_dev_layout_crlf_quoted_tab_and_labels(tmp_path):
    p = write(tmp_path, b'11\t0\ta\tsad day \r\n12\t4\ta\t"quoted\twith tab"\r\n13\t1\ta\tplain\r\n')
    rows = read_all(p)
    assert rows.ids == ["11", "12", "13"]
    assert rows.labels == [0, 1, 1]
    assert rows.texts == ["sad day ", "quoted\twith tab", "plain"]
    assert rows.lines == [1, 2, 3]
    assert not rows.rejects


def test_test_layout_with_header_and_index_column(tmp_path):
    p = write(tmp_path, b'\tid\tlabel\talpha\ttweet\r\n7\t100\t4\ta\tgood\r\n8\t101\t0\ta\tbad\r\n')
    rows = read_all(p)
    assert rows.ids == ["100", "101"]
    assert rows.labels == [1, 0]
    assert rows.texts == ["good", "bad"]
    assert rows.lines == [2, 3]


def test_one_column_is_unlabeled_text(tmp_path):
    p = write(tmp_path, "first tweet\nsecond tweet, with commas\n\u00e9t\u00e9 \U0001F600\n".encode())
    rows = read_all(p)
    assert rows.texts == ["first tweet", "second tweet, with commas", "\u00e9t\u00e9 \U0001F600"]
    assert rows.labels == [NO_LABEL] * 3
    assert rows.ids == ["1", "2", "3"]


def test_bad_label_and_short_row_are_rejected_with_line_numbers(tmp_path):
    p = write(tmp_path, b'1\t0\ta\tok\n2\t7\ta\tbad label\n3\t0\n4\t4\ta\talso ok\n')
    rows = read_all(p)
    assert rows.ids == ["1", "4"]
    assert [(r.line, r.reason.split()[0]) for r in rows.rejects] == [(2, "label"), (3, "expected")]


def test_chunks_keep_order_and_sizes(tmp_path):
    p = write(tmp_path, b"".join(b"%d\t0\ta\ttext %d\n" % (i, i) for i in range(1000)))
    chunks = list(iter_chunks(p, chunk_rows=300))
    assert [len(c) for c in chunks] == [300, 300, 300, 100]
    assert [i for c in chunks for i in c.ids] == [str(i) for i in range(1000)]
    assert chunks[-1].bytes_read == p.stat().st_size


def test_missing_and_directory_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_all(tmp_path / "nope.tsv")
    with pytest.raises(InputError, match="directory"):
        read_all(tmp_path)


def test_seed_files_read_completely(full_data):
    dev, test = read_all(full_data / "dev.tsv"), read_all(full_data / "test.tsv")
    assert (len(dev), len(test)) == (15840, 15682)
    assert not dev.rejects and not test.rejects
    assert np.bincount(dev.labels).tolist() == [7971, 7869]
    assert np.bincount(test.labels).tolist() == [7862, 7820]
    quoted = [t for t in dev.texts + test.texts if "\t" in t]
    assert len(quoted) == 4


def test_twitter_column_names_in_a_tsv_header_read_as_in_csv(tmp_path):
    from tsinfer.infer.formats import read_chunks

    body = '1001\t4\tgood day\n1002\tnegative\t"a\ttab"\n'
    tsv = write(tmp_path, f"id_str\tlabel\tfull_text\n{body}".encode())
    rows = read_all(tsv)
    assert not rows.rejects and rows.lines == [2, 3]
    assert (rows.ids, rows.labels, rows.texts) == (["1001", "1002"], [1, 0], ["good day", "a\ttab"])
    csv_rows = [c for c in read_chunks(str(write(tmp_path, f"id_str,label,full_text\n{body}".replace("\t4\t", ",4,")
                                                 .replace("\tnegative\t", ",negative,").encode(), "in.csv")), 100)][0]
    assert (csv_rows.ids, csv_rows.labels, csv_rows.texts, csv_rows.lines) == (rows.ids, rows.labels, rows.texts,
                                                                               rows.lines)

